package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/policy"
	"github.com/quell-ir/quell/internal/txn"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Test and evaluate Rego policies"}
	test := &cobra.Command{
		Use:   "test DIR...",
		Short: "Run the Rego unit tests in DIR and print coverage",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := policy.RunTests(cmd.Context(), cmd.OutOrStdout(), args...)
			if err != nil {
				return err
			}
			if !res.OK() {
				return exitError{code: 1}
			}
			return nil
		},
	}
	var (
		cfgPath, dir, bundle, eventFile, actionName, risk, incident, requester string
		params, targets, evidence                                              []string
		ttl                                                                    time.Duration
		mode                                                                   string
	)
	eval := &cobra.Command{
		Use:   "eval",
		Short: "Show the policy decision for an event and a proposed action, without acting",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, cfgPath)
			if err != nil {
				return err
			}
			pc := cfg.Policy
			if dir != "" {
				pc.Dir, pc.Bundle = dir, ""
			}
			if bundle != "" {
				pc.Bundle, pc.Dir = bundle, ""
			}
			pc.Enabled = true
			ev, ec, err := policy.ReadEvent(eventFile)
			if err != nil {
				return err
			}
			reg, err := app.Registry(cmd.Context(), cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				return err
			}
			spec := action.Spec{Name: actionName}
			if d, ok := reg.Lookup(actionName); ok {
				spec = d.Spec
			}
			req := policy.EvalRequest{Event: ev, Context: ec, Spec: spec, Params: map[string]string{}, TTL: ttl,
				Mode: txn.Mode(mode), Requester: requester, IncidentID: incident, Evidence: evidence}
			for _, p := range params {
				k, v, ok := strings.Cut(p, "=")
				if !ok {
					return fmt.Errorf("--param %q: want key=value", p)
				}
				req.Params[k] = v
			}
			for _, t := range targets {
				k, v, ok := strings.Cut(t, ":")
				if !ok {
					return fmt.Errorf("--target %q: want kind:value", t)
				}
				req.Targets = append(req.Targets, action.Target{Kind: k, Value: v})
			}
			if risk != "" {
				if req.Context == nil {
					req.Context = &event.Context{}
				}
				req.Context.Risk = &event.Risk{Level: strings.ToUpper(risk)}
			}
			_, _, err = policy.EvalEvent(cmd.Context(), pc, req, cmd.OutOrStdout())
			return err
		},
	}
	eval.Flags().StringVarP(&cfgPath, "config", "c", os.Getenv("QUELL_CONFIG"), "YAML configuration file")
	eval.Flags().StringVar(&dir, "policy", "", "policy directory (default: the configuration's)")
	eval.Flags().StringVar(&bundle, "bundle", "", "policy bundle (.tar.gz)")
	eval.Flags().StringVar(&eventFile, "event", "", "normalized event JSON file (required)")
	eval.Flags().StringVar(&actionName, "action", "", "proposed action (required)")
	eval.Flags().StringSliceVar(&params, "param", nil, "action parameter key=value (repeatable)")
	eval.Flags().StringSliceVar(&targets, "target", nil, "target kind:value (repeatable)")
	eval.Flags().StringSliceVar(&evidence, "evidence", nil, "actions already completed for the incident")
	eval.Flags().StringVar(&risk, "risk", "", "risk level to assume: LOW, MEDIUM, HIGH, CRITICAL")
	eval.Flags().StringVar(&incident, "incident", "", "incident id")
	eval.Flags().StringVar(&requester, "requester", "", "who asks")
	eval.Flags().DurationVar(&ttl, "ttl", 0, "requested TTL")
	eval.Flags().StringVar(&mode, "mode", "enforce", "audit or enforce")
	eval.MarkFlagRequired("event")
	eval.MarkFlagRequired("action")
	cmd.AddCommand(test, eval)
	return cmd
}

func newCheckCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "check --policy DIR INPUT...",
		Short: "Preparation checks: evaluate deny rules over Terraform plans or Kubernetes manifests",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := policy.Check(cmd.Context(), dir, args, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if n > 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "policy", "", "directory of check rules (required)")
	cmd.MarkFlagRequired("policy")
	return cmd
}
