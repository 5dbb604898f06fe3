package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/sluicehq/sluice/internal/client"
)

// jsonFields are fields whose flag value is JSON, sent as is: a limits
// object ({"requests":"10/min","models":["gpt-4o-mini"]}).
var jsonFields = map[string]bool{"limits": true, "guaranteed": true}

// runClient runs a client command (cli_cmd.go has the commands): tables
// when stdout is a terminal, JSON otherwise, unless -o says.
func runClient(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	return runCLI(args, stdout, stderr, getenv, isTerminal(stdout))
}

// apply sends a policy file to the server: sluice apply -f FILE [--dry-run].
func apply(ctx context.Context, c *client.Client, flags map[string]string, stdout, stderr io.Writer) error {
	if _, ok := flags["what_if"]; ok {
		return applyWhatIf(ctx, c, flags, stdout)
	}
	path := flags["f"]
	if path == "" {
		path = flags["file"]
	}
	if path == "" {
		return usageError("apply needs -f FILE (or -f - for standard input)")
	}
	data, err := readInput(path)
	if err != nil {
		return err
	}
	q := url.Values{}
	dry := flags["dry_run"] == "true"
	if dry {
		q.Set("dry_run", "true")
	}
	var out struct {
		Changes []struct{ Action, Kind, Path, Detail string } `json:"changes"`
	}
	if err := c.DoRaw(ctx, http.MethodPost, "/api/v1/admin/policy", q, "application/yaml", data, &out); err != nil {
		return err
	}
	sym := map[string]string{"create": "+", "update": "~", "set-limits": "~", "add-member": "+"}
	for _, ch := range out.Changes {
		line := fmt.Sprintf("%s %s %s", sym[ch.Action], ch.Kind, ch.Path)
		if ch.Detail != "" {
			line += ": " + ch.Detail
		}
		fmt.Fprintln(stdout, line)
	}
	switch {
	case len(out.Changes) == 0:
		fmt.Fprintln(stderr, "no changes: the server already matches", path)
	case dry:
		fmt.Fprintf(stderr, "%d changes (dry run: nothing applied)\n", len(out.Changes))
	default:
		fmt.Fprintf(stderr, "%d changes applied\n", len(out.Changes))
	}
	return nil
}

// keySpend prints spend per API key from the usage ledger: sluice usage
// keys [--tenant-id T] [--user-id U] [--period 2026-05] [--limit N] [--after ID].
func keySpend(ctx context.Context, c *client.Client, stdout io.Writer, flags map[string]string) error {
	q := url.Values{}
	for k, v := range flags {
		switch k {
		case "tenant_id", "user_id", "period", "limit", "after":
			q.Set(k, v)
		default:
			return usageError(fmt.Sprintf("usage keys: unknown flag --%s (flags: --tenant-id, --user-id, --period, --limit, --after)", k))
		}
	}
	return show(ctx, c, stdout, http.MethodGet, "/api/v1/admin/usage/keys", q, nil)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// show performs a call and prints the answer: the API's JSON, indented,
// or a table when w is an output that asks for one.
func show(ctx context.Context, c *client.Client, w io.Writer, method, path string, q url.Values, body any) error {
	var raw json.RawMessage
	if err := c.Do(ctx, method, path, q, body, &raw); err != nil {
		return err
	}
	return printRaw(w, raw)
}
