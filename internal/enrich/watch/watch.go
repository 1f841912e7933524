// Package watch calls a function when a file changes. It watches the file's
// directory rather than the file, because feed downloaders usually replace a
// file by renaming a new one over it, which a watch on the old inode misses.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Files watches paths and calls onChange(path) after a change settles: a
// burst of writes within debounce makes one call, so a file being written in
// pieces is read once, after the last piece. It returns when ctx ends.
// Errors from the watcher are logged; the caller's last good state stays.
func Files(ctx context.Context, log *slog.Logger, debounce time.Duration, paths []string, onChange func(path string)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer w.Close()
	want := map[string]bool{}
	dirs := map[string]bool{}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("watch %s: %w", p, err)
		}
		want[abs] = true
		dirs[filepath.Dir(abs)] = true
	}
	for d := range dirs {
		if err := w.Add(d); err != nil {
			return fmt.Errorf("watch %s: %w", d, err)
		}
	}
	pending := map[string]time.Time{}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			abs, _ := filepath.Abs(ev.Name)
			if !want[abs] || ev.Op == fsnotify.Chmod {
				continue
			}
			pending[abs] = time.Now().Add(debounce)
			timer.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("file watcher error", "err", err)
		case <-timer.C:
			now := time.Now()
			var next time.Duration
			for p, at := range pending {
				if !now.Before(at) {
					delete(pending, p)
					onChange(p)
				} else if d := at.Sub(now); next == 0 || d < next {
					next = d
				}
			}
			if next > 0 {
				timer.Reset(next)
			}
		}
	}
}
