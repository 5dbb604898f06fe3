package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/internal/client"
	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/whatif"
)

// whatIfFlags are the flags of sluice apply --what-if.
var whatIfFlags = []string{"f", "file", "what_if", "o", "tenant_id"}

// whatIfOptions are the bounds of the API's policy what-if.
func whatIfOptions(cfg *config.Config) whatif.Options {
	wait := time.Duration(cfg.Admission.MaxWait)
	if wait <= 0 {
		wait = -1 // no queue: a full concurrency limit denies at once
	}
	return whatif.Options{MaxEvents: cfg.WhatIfMaxEvents, MaxWait: wait, QueueMax: cfg.Admission.QueueMax}
}

// whatIfView is the part of the what-if report the table shows.
type whatIfView struct {
	Window   string    `json:"window"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Replayed struct {
		Events, Runs, Denied, Clamped, Queued int64
		Warmup                                int64 `json:"warmup_events"`
	} `json:"replayed"`
	Walls []struct {
		Scope, Name, Part, Dimension, Window string
		Limit                                int64
		Period                               string
		Denied                               struct{ Asks, Requests, Tokens, Runs int64 }
		Clamped                              struct{ Asks, Tokens int64 }
		Queued                               struct {
			Asks, Runs int64
			TimedOut   int64 `json:"timed_out"`
			Full       int64 `json:"queue_full"`
		}
		FirstWallAt time.Time `json:"first_wall_at"`
	} `json:"walls"`
	Notes []string `json:"notes"`
}

// applyWhatIf is sluice apply -f FILE --what-if 7d: the draft in FILE is
// replayed against the ledger's last days (POST
// /api/v1/admin/policy/what-if) and nothing is applied. A table by
// default; -o json prints the server's report.
func applyWhatIf(ctx context.Context, c *client.Client, flags map[string]string, stdout io.Writer) error {
	for k := range flags {
		if !contains(whatIfFlags, k) {
			return usageError(fmt.Sprintf("apply --what-if: unknown flag --%s (flags: -f, --what-if, -o, --tenant-id)", strings.ReplaceAll(k, "_", "-")))
		}
	}
	path := flags["f"]
	if path == "" {
		path = flags["file"]
	}
	if path == "" {
		return usageError("apply --what-if needs -f FILE (or -f - for standard input)")
	}
	format := flags["o"]
	if format != "" && format != "json" && format != "table" {
		return usageError(fmt.Sprintf("apply --what-if: -o must be table or json, not %q", format))
	}
	data, err := readInput(path)
	if err != nil {
		return err
	}
	q := url.Values{"window": {flags["what_if"]}}
	if t := flags["tenant_id"]; t != "" {
		q.Set("tenant_id", t)
	}
	var raw json.RawMessage
	if err := c.DoRaw(ctx, http.MethodPost, "/api/v1/admin/policy/what-if", q, "application/yaml", data, &raw); err != nil {
		return err
	}
	if format == "json" {
		_, err := fmt.Fprintf(stdout, "%s\n", strings.TrimSpace(string(raw)))
		return err
	}
	var v whatIfView
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("what-if: unexpected answer: %w", err)
	}
	printWhatIf(stdout, &v)
	return nil
}

func printWhatIf(w io.Writer, v *whatIfView) {
	r := v.Replayed
	fmt.Fprintf(w, "what-if over the last %s (%s to %s): %d events and %d runs replayed against the draft; nothing applied\n",
		v.Window, v.From.UTC().Format(time.RFC3339), v.To.UTC().Format(time.RFC3339), r.Events, r.Runs)
	if len(v.Walls) == 0 {
		fmt.Fprintln(w, "no limit of the draft would have been hit")
	} else {
		fmt.Fprintf(w, "%d denied, %d clamped, %d queued\n\n", r.Denied, r.Clamped, r.Queued)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SCOPE\tDIMENSION\tLIMIT\tDENIED\tDENIED TOKENS\tDENIED RUNS\tCLAMPED\tQUEUED\tFIRST WALL AT")
		for _, x := range v.Walls {
			name := x.Name
			if x.Part != "" {
				name += " (" + x.Part + " part)"
			}
			dim := x.Dimension
			if x.Window != "" {
				dim += "/" + x.Window
			}
			limit := fmt.Sprint(x.Limit)
			if x.Period != "" {
				limit += "/" + x.Period
			}
			queued := fmt.Sprint(x.Queued.Asks)
			if x.Queued.TimedOut > 0 {
				queued += fmt.Sprintf(" (%d timed out)", x.Queued.TimedOut)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", name, dim, limit, x.Denied.Asks, x.Denied.Tokens, x.Denied.Runs,
				x.Clamped.Asks, queued, x.FirstWallAt.UTC().Format(time.RFC3339))
		}
		tw.Flush()
	}
	for _, n := range v.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}
