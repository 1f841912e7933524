// Package asset answers "who owns this address": a static inventory file
// (YAML or CSV) now, a live Kubernetes pod/service index later, behind one
// small interface.
package asset

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gaissmai/bart"
	"go.yaml.in/yaml/v3"

	"github.com/quell-ir/quell/internal/enrich/netclass"
	"github.com/quell-ir/quell/internal/enrich/watch"
)

// Info is what an inventory knows about an address.
type Info struct {
	Owner       string            `yaml:"owner" json:"owner,omitempty"`
	Service     string            `yaml:"service" json:"service,omitempty"`
	Environment string            `yaml:"environment" json:"environment,omitempty"` // production, staging, ...
	Criticality string            `yaml:"criticality" json:"criticality,omitempty"` // low, medium, high, critical
	Labels      map[string]string `yaml:"labels" json:"labels,omitempty"`           // namespace, workload, ...
}

// Source is an asset inventory. Lookup must be fast (it runs per event, in
// memory) and safe for concurrent use.
type Source interface {
	Lookup(ctx context.Context, addr netip.Addr) (Info, bool)
}

// Config configures the static inventory.
type Config struct {
	// Path is a YAML or CSV inventory (by extension: .yaml/.yml or .csv).
	// Empty: no static inventory.
	Path string `yaml:"path"`
	// FailClosed marks events fail-closed when the inventory cannot answer.
	FailClosed bool `yaml:"fail_closed"`
}

// DefaultConfig returns the defaults: no inventory.
func DefaultConfig() Config { return Config{} }

// Validate checks the config.
func (c Config) Validate() error {
	if c.Path == "" {
		return nil
	}
	switch strings.ToLower(filepath.Ext(c.Path)) {
	case ".yaml", ".yml", ".csv":
		return nil
	}
	return fmt.Errorf("path: must end in .yaml, .yml or .csv, got %q", c.Path)
}

// Entry is one inventory row: an address or prefix and its info.
type Entry struct {
	CIDR string `yaml:"cidr"`
	Info `yaml:",inline"`
}

// Static is an inventory file held in a prefix table; the most specific
// entry wins. It reloads when the file changes, keeping the previous table
// when the new file is wrong.
type Static struct {
	path string
	t    atomic.Pointer[bart.Table[*Info]]
	log  *slog.Logger
}

// Open loads the inventory at path.
func Open(path string, log *slog.Logger) (*Static, error) {
	s := &Static{path: path, log: log}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the file; on error the previous table stays.
func (s *Static) Reload() error {
	b, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("asset inventory: %w", err)
	}
	var entries []Entry
	if strings.EqualFold(filepath.Ext(s.path), ".csv") {
		entries, err = parseCSV(b)
	} else {
		entries, err = parseYAML(b)
	}
	if err != nil {
		return fmt.Errorf("asset inventory %s: %w", s.path, err)
	}
	t := new(bart.Table[*Info])
	for i, e := range entries {
		p, err := netclass.ParsePrefix(e.CIDR)
		if err != nil {
			return fmt.Errorf("asset inventory %s: entry %d: cidr: %w", s.path, i+1, err)
		}
		info := e.Info
		t.Insert(p, &info)
	}
	s.t.Store(t)
	return nil
}

func parseYAML(b []byte) ([]Entry, error) {
	var doc struct {
		Assets []Entry `yaml:"assets"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return doc.Assets, nil
}

// parseCSV reads a header row naming cidr (or ip), owner, service,
// environment, criticality; other columns become labels.
func parseCSV(b []byte) ([]Entry, error) {
	r := csv.NewReader(bytes.NewReader(b))
	r.Comment = '#'
	r.FieldsPerRecord = 0
	head, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	cidrCol := -1
	for i, h := range head {
		head[i] = strings.ToLower(strings.TrimSpace(h))
		if head[i] == "cidr" || head[i] == "ip" {
			cidrCol = i
		}
	}
	if cidrCol < 0 {
		return nil, errors.New("header: no cidr or ip column")
	}
	var out []Entry
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		e := Entry{CIDR: rec[cidrCol]}
		for i, v := range rec {
			switch head[i] {
			case "cidr", "ip":
			case "owner":
				e.Owner = v
			case "service":
				e.Service = v
			case "environment":
				e.Environment = v
			case "criticality":
				e.Criticality = v
			default:
				if v != "" {
					if e.Labels == nil {
						e.Labels = map[string]string{}
					}
					e.Labels[head[i]] = v
				}
			}
		}
		out = append(out, e)
	}
}

// Lookup implements Source.
func (s *Static) Lookup(_ context.Context, addr netip.Addr) (Info, bool) {
	if !addr.IsValid() {
		return Info{}, false
	}
	info, ok := s.t.Load().Lookup(addr.Unmap().WithZone(""))
	if !ok {
		return Info{}, false
	}
	return *info, true
}

// Watch reloads the inventory when its file changes, until ctx ends.
func (s *Static) Watch(ctx context.Context, debounce time.Duration) error {
	return watch.Files(ctx, s.log, debounce, []string{s.path}, func(string) {
		if err := s.Reload(); err != nil {
			s.log.Warn("asset inventory reload failed; keeping the previous one", "err", err)
		} else {
			s.log.Info("asset inventory reloaded", "path", s.path)
		}
	})
}

// Chain asks each source in order and returns the first answer: a live
// index before the static file.
type Chain []Source

// Lookup implements Source.
func (c Chain) Lookup(ctx context.Context, addr netip.Addr) (Info, bool) {
	for _, s := range c {
		if info, ok := s.Lookup(ctx, addr); ok {
			return info, true
		}
	}
	return Info{}, false
}
