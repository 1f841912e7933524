package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/quell-ir/quell/internal/server"
	"github.com/quell-ir/quell/internal/txn"
)

func newBreakGlassCmd() *cobra.Command {
	c := &client{}
	cmd := &cobra.Command{Use: "breakglass", Short: "Time-bound emergency rights, approved by another person"}
	addClientFlags(cmd, c)
	var req server.BreakGlassRequest
	request := &cobra.Command{
		Use:   "request",
		Short: "Ask for elevated rights for a person (at most 1h; another person must approve)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.By == "" {
				req.By = os.Getenv("USER")
			}
			body, _ := json.Marshal(req)
			var t txn.Transaction
			if err := c.do(cmd.Context(), "POST", "/v1/breakglass", body, nil, &t); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s: approve with `quell txn approve %s`\n", t.ID, t.State, t.ID)
			return nil
		},
	}
	request.Flags().StringVar(&req.Person, "person", "", "who gets the rights (required)")
	request.Flags().StringVar(&req.Role, "role", "", "which rights (required)")
	request.Flags().StringVar(&req.Duration, "for", "1h", "how long (at most 1h)")
	request.Flags().StringVarP(&req.Reason, "reason", "m", "", "why")
	request.Flags().StringVar(&req.By, "by", "", "who asks (default: $USER; with a token, the token's name)")
	request.MarkFlagRequired("person")
	request.MarkFlagRequired("role")
	cmd.AddCommand(request)
	return cmd
}
