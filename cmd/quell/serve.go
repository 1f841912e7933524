package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/txn"
)

func newServeCmd() *cobra.Command {
	var (
		cfgPath, addr, data, mode string
		playbooks                 []string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the engine: HTTP API, pipeline and transaction engine",
		Long: `Run quell. With no configuration it listens on 127.0.0.1:8080, keeps its data in
./quell-data (SQLite) and runs in audit mode: it records what it would do and
changes nothing until enforcement is turned on.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, cfgPath)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("addr") {
				cfg.Server.Addr = addr
			}
			if cmd.Flags().Changed("data") {
				cfg.DataDir = data
			}
			if cmd.Flags().Changed("mode") {
				if mode != string(txn.ModeAudit) && mode != string(txn.ModeEnforce) {
					return fmt.Errorf("--mode: must be audit or enforce, got %q", mode)
				}
				cfg.Mode, cfg.Engine.Mode = txn.Mode(mode), txn.Mode(mode)
			}
			if cmd.Flags().Changed("playbooks") {
				cfg.Playbooks = playbooks
			}
			log := newLogger(cfg.Log)
			return serve(cmd.Context(), cfg, log)
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", os.Getenv("QUELL_CONFIG"), "YAML configuration file")
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8080", "HTTP listen address")
	cmd.Flags().StringVar(&data, "data", "./quell-data", "data directory (SQLite database)")
	cmd.Flags().StringVar(&mode, "mode", "audit", "global mode: audit (record only) or enforce")
	cmd.Flags().StringSliceVar(&playbooks, "playbooks", nil, "playbook files or directories")
	return cmd
}

func loadConfig(cmd *cobra.Command, path string) (config.Config, error) {
	cfg, err := config.Load(path, os.Environ())
	if err != nil {
		return cfg, fmt.Errorf("configuration:\n%w", err)
	}
	return cfg, nil
}

func newLogger(c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

func serve(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	a, err := app.New(ctx, cfg, app.Options{Logger: log})
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			log.Info("SIGHUP: reloading playbooks")
			_ = a.Reload(ctx)
			continue
		case <-ctx.Done():
		}
		break
	}
	log.Info("shutting down", "timeout", cfg.Server.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	return a.Stop(sctx)
}
