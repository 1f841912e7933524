package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
)

func newValidateCmd() *cobra.Command {
	var cfgPath string
	var playbooks []string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a configuration file (and the playbooks it names) without starting",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath, os.Environ())
			out := cmd.OutOrStdout()
			var ces config.Errors
			if errors.As(err, &ces) {
				for _, e := range ces {
					fmt.Fprintln(out, e.Error())
				}
				return exitError{code: 1}
			} else if err != nil {
				return err
			}
			if cmd.Flags().Changed("playbooks") {
				cfg.Playbooks = playbooks
			}
			if err := app.ValidatePlaybooks(context.Background(), cfg); err != nil {
				fmt.Fprintln(out, err.Error())
				return exitError{code: 1}
			}
			fmt.Fprintf(out, "%s: ok\n", nameOr(cfgPath, "defaults"))
			return nil
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "", "YAML configuration file")
	cmd.Flags().StringSliceVar(&playbooks, "playbooks", nil, "playbook files or directories")
	return cmd
}

func nameOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "quell", app.Version)
		},
	}
}
