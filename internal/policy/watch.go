package policy

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch reloads the policy whenever its files change, until ctx ends (it
// then returns nil). Changes are debounced (Config.WatchDebounce) so that a
// multi-file save or a bundle being copied in is loaded whole. A reload that
// fails keeps the policy in force (see Reload). The lead's daemon runs it in
// a goroutine when Config.Watch is set.
func (e *Engine) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy: %w", err)
	}
	defer w.Close()
	// For a bundle file, watch its directory: editors and `cp` replace the
	// file, and a watch on the file itself would be lost with the old inode.
	target := e.cfg.Bundle
	root := filepath.Dir(e.cfg.Bundle)
	if e.cfg.Dir != "" {
		target, root = "", e.cfg.Dir
	}
	if err := addTree(w, root, target == ""); err != nil {
		return fmt.Errorf("watch policy %s: %w", root, err)
	}
	var (
		timer   *time.Timer
		timerC  <-chan time.Time
		pending bool
	)
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if target != "" && filepath.Clean(ev.Name) != filepath.Clean(target) {
				continue
			}
			if target == "" && ev.Has(fsnotify.Create) {
				if st, err := os.Stat(ev.Name); err == nil && st.IsDir() {
					_ = addTree(w, ev.Name, true) // a new sub-directory of policies
				}
			}
			if !pending {
				pending = true
				timer = time.NewTimer(e.cfg.WatchDebounce)
				timerC = timer.C
			} else {
				timer.Reset(e.cfg.WatchDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			e.log.Warn("policy watch error", "err", err)
		case <-timerC:
			pending, timerC = false, nil
			if err := e.Reload(ctx); err == nil {
				e.log.Info("policy reloaded after a file change", "revision", e.Revision())
			}
		}
	}
}

func addTree(w *fsnotify.Watcher, root string, recursive bool) error {
	if !recursive {
		return w.Add(root)
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return w.Add(p)
		}
		return nil
	})
}
