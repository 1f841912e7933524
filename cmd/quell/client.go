package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/quell-ir/quell/internal/server"
	"github.com/quell-ir/quell/internal/txn"
)

// client talks to a running quell.
type client struct {
	base  string
	token string
	http  *http.Client
}

func addClientFlags(cmd *cobra.Command, c *client) {
	def := os.Getenv("QUELL_URL")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	cmd.PersistentFlags().StringVar(&c.base, "server", def, "quell API base URL (env QUELL_URL)")
	cmd.PersistentFlags().StringVar(&c.token, "token", os.Getenv("QUELL_TOKEN"), "bearer token (env QUELL_TOKEN)")
	c.http = &http.Client{Timeout: 60 * time.Second}
}

// apiError is a non-2xx answer.
type apiError struct {
	Status int
	Field  string
	Reason string
}

func (e *apiError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("HTTP %d: %s: %s", e.Status, e.Field, e.Reason)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, e.Reason)
}

func (c *client) do(ctx context.Context, method, path string, body []byte, hdr map[string]string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.base, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error server.APIError `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error.Reason != "" {
			return &apiError{Status: resp.StatusCode, Field: e.Error.Field, Reason: e.Error.Reason}
		}
		return &apiError{Status: resp.StatusCode, Reason: strings.TrimSpace(string(data))}
	}
	if out != nil {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = data
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newEventsCmd() *cobra.Command {
	c := &client{}
	cmd := &cobra.Command{Use: "events", Short: "Send and inspect events"}
	addClientFlags(cmd, c)
	var source string
	send := &cobra.Command{
		Use:   "send FILE...",
		Short: "Post events to a running quell (normalized, or a tool's own format with --source)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/v1/events"
			if source != "" {
				path = "/v1/sources/" + source
			}
			for _, f := range args {
				var body []byte
				var err error
				if f == "-" {
					body, err = io.ReadAll(os.Stdin)
				} else {
					body, err = os.ReadFile(f)
				}
				if err != nil {
					return err
				}
				var raw json.RawMessage
				if err := c.do(cmd.Context(), "POST", path, body, nil, &raw); err != nil {
					return fmt.Errorf("%s: %w", f, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s", raw)
			}
			return nil
		},
	}
	send.Flags().StringVar(&source, "source", "", "source format: falco, guardduty, cloudtrail, alertmanager, crowdsec, k8saudit, generic")
	var output string
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List recent events",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Events []struct {
					Event struct {
						ID, Source, Type, Priority, Rule string
						Time                             time.Time
					} `json:"event"`
					ProcessedAt *time.Time `json:"processed_at"`
				} `json:"events"`
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", "/v1/events", nil, nil, &raw); err != nil {
				return err
			}
			if output == "json" {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			if err := json.Unmarshal(raw, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSOURCE\tTYPE\tPRIORITY\tRULE\tTIME\tPROCESSED")
			for _, e := range out.Events {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", e.Event.ID, e.Event.Source, e.Event.Type, e.Event.Priority, e.Event.Rule, e.Event.Time.Format(time.RFC3339), e.ProcessedAt != nil)
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one event with its enrichment, risk and transactions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", "/v1/events/"+args[0], nil, nil, &raw); err != nil {
				return err
			}
			_, err := cmd.OutOrStdout().Write(raw)
			return err
		},
	}
	cmd.AddCommand(send, ls, show)
	return cmd
}

func newTxnCmd() *cobra.Command {
	c := &client{}
	cmd := &cobra.Command{Use: "txn", Aliases: []string{"transactions"}, Short: "List, inspect, approve, reject and revert transactions"}
	addClientFlags(cmd, c)
	var output, state, action, eventID string
	var limit int
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List transactions (revert_failed ones are flagged)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := fmt.Sprintf("/v1/transactions?limit=%d", limit)
			if state != "" {
				q += "&state=" + state
			}
			if action != "" {
				q += "&action=" + action
			}
			if eventID != "" {
				q += "&event_id=" + eventID
			}
			var out struct {
				Transactions []*txn.Transaction `json:"transactions"`
			}
			if err := c.do(cmd.Context(), "GET", q, nil, nil, &out); err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tACTION\tTARGET\tMODE\tSTATE\tEXPIRES\tREASON")
			failed := 0
			for _, t := range out.Transactions {
				exp := "-"
				if t.ExpiresAt != nil && !t.State.Terminal() {
					exp = t.ExpiresAt.Format(time.RFC3339)
				}
				st := string(t.State)
				if t.State == txn.RevertFailed {
					st = "!! " + st
					failed++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Action, targets(t), t.Mode, st, exp, oneLine(t.Reason, 80))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if failed > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "\n%d transaction(s) in revert_failed: containment may remain in place; a human must restore it.\n", failed)
			}
			return nil
		},
	}
	ls.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	ls.Flags().StringVar(&state, "state", "", "filter by state (comma-separated)")
	ls.Flags().StringVar(&action, "action", "", "filter by action")
	ls.Flags().StringVar(&eventID, "event", "", "filter by event id")
	ls.Flags().IntVar(&limit, "limit", 100, "at most this many")
	var showOut string
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a transaction with its decision and journal",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v server.TxnView
			if err := c.do(cmd.Context(), "GET", "/v1/transactions/"+args[0], nil, nil, &v); err != nil {
				return err
			}
			if showOut == "json" {
				return printJSON(cmd.OutOrStdout(), v)
			}
			w := cmd.OutOrStdout()
			t := v.Transaction
			fmt.Fprintf(w, "Transaction %s\n  action:   %s %v\n  targets:  %s\n  mode:     %s\n  state:    %s\n  key:      %s\n  origin:   %s\n", t.ID, t.Action, t.Params, targets(t), t.Mode, t.State, t.Key, t.Origin)
			if t.ExpiresAt != nil {
				fmt.Fprintf(w, "  expires:  %s\n", t.ExpiresAt.Format(time.RFC3339))
			}
			if t.Reason != "" {
				fmt.Fprintf(w, "  reason:   %s\n", t.Reason)
			}
			if t.Error != "" {
				fmt.Fprintf(w, "  error:    %s\n", t.Error)
			}
			if d := t.Decision; d != nil {
				fmt.Fprintf(w, "  decision: %s by %s (revision %s, input %s)\n", d.Verdict, d.Engine, nameOr(d.PolicyRevision, "-"), nameOr(d.InputHash, "-"))
				for _, r := range d.Reasons {
					fmt.Fprintf(w, "            - %s\n", r)
				}
			}
			for _, a := range t.Approvals {
				verb := "rejected"
				if a.Approved {
					verb = "approved"
				}
				fmt.Fprintf(w, "  %s by %s at %s: %s\n", verb, a.By, a.At.Format(time.RFC3339), a.Comment)
			}
			fmt.Fprintln(w, "  journal:")
			for _, j := range v.Journal {
				fmt.Fprintf(w, "    %3d %s %-17s -> %-17s %s\n", j.Seq, j.At.Format("15:04:05.000"), nameOr(string(j.From), "-"), j.To, j.Detail)
			}
			return nil
		},
	}
	show.Flags().StringVarP(&showOut, "output", "o", "text", "output format: text or json")
	cmd.AddCommand(ls, show)
	for _, op := range []string{"approve", "reject", "revert"} {
		var by, comment string
		sub := &cobra.Command{
			Use:   op + " ID",
			Short: strings.ToUpper(op[:1]) + op[1:] + " a transaction",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if by == "" {
					by = os.Getenv("USER")
				}
				body, _ := json.Marshal(server.HumanRequest{By: by, Comment: comment})
				var t txn.Transaction
				if err := c.do(cmd.Context(), "POST", "/v1/transactions/"+args[0]+"/"+op, body, nil, &t); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s\n", t.ID, op, t.State)
				return nil
			},
		}
		sub.Flags().StringVar(&by, "by", "", "who (default: $USER)")
		sub.Flags().StringVarP(&comment, "comment", "m", "", "why")
		cmd.AddCommand(sub)
	}
	return cmd
}

func targets(t *txn.Transaction) string {
	s := make([]string, len(t.Targets))
	for i, tg := range t.Targets {
		s[i] = tg.String()
	}
	return nameOr(strings.Join(s, ","), "-")
}

func oneLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}
