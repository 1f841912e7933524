package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quell-ir/quell/internal/app"
)

func newActionsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "actions", Short: "Describe the actions this build offers"}
	var output, cfgPath string
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List every action with its parameters, privileges and an example",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, cfgPath)
			if err != nil {
				return err
			}
			reg, err := app.Registry(cmd.Context(), cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			specs := reg.Specs()
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), specs)
			}
			w := cmd.OutOrStdout()
			for _, s := range specs {
				fmt.Fprintf(w, "%s (%s)%s\n  %s\n", s.Name, s.Provider, flags(s.Reversible, s.Eradication), s.Description)
				for _, p := range s.Params {
					req := ""
					if p.Required {
						req = ", required"
					}
					if p.Default != "" {
						req += ", default " + p.Default
					}
					if len(p.Enum) > 0 {
						req += ", one of " + strings.Join(p.Enum, "|")
					}
					fmt.Fprintf(w, "    %-12s %-9s %s%s\n", p.Name, p.Type, p.Description, paren(req))
				}
				if len(s.Needs) > 0 {
					fmt.Fprintf(w, "  needs: %s\n", strings.Join(s.Needs, "; "))
				}
				if s.Example != "" {
					fmt.Fprintf(w, "  example:\n    %s\n", strings.ReplaceAll(strings.TrimSpace(s.Example), "\n", "\n    "))
				}
				fmt.Fprintln(w)
			}
			return nil
		},
	}
	ls.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	ls.Flags().StringVarP(&cfgPath, "config", "c", os.Getenv("QUELL_CONFIG"), "YAML configuration file (for configured exec commands)")
	cmd.AddCommand(ls)
	return cmd
}

func flags(rev, erad bool) string {
	var f []string
	if rev {
		f = append(f, "reversible")
	}
	if erad {
		f = append(f, "eradication: needs approval")
	}
	if len(f) == 0 {
		return ""
	}
	return " [" + strings.Join(f, ", ") + "]"
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return " (" + strings.TrimPrefix(s, ", ") + ")"
}
