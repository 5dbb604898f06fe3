package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/sluicehq/sluice/internal/client"
	"github.com/sluicehq/sluice/internal/usage"
)

const usageReportText = `sluice usage report: use per day or month (and model, or project), summed from the usage ledger

Usage:
  sluice usage report [--scope S] [--month 2026-11 | --from DAY --to DAY] [--group day|month]
                      [--by model|project] [--format table|json|csv]

Flags:
  --scope S       tenant/ID, department/ID, project/ID, user/ID, key/ID, membership/USER_ID@PROJECT_ID
                  (global: platform admins); default: yourself (user/<your id>)
  --month M       one month, such as 2026-11; default: the current month in your tenant's time zone
  --from, --to    the first and last day (2026-11-01) or month (2026-11), both included; at most 400 days
  --group G       day (default) or month
  --by model      one row per period and model
  --by project    every project you can see (admins: all of your tenant; platform admins narrow with
                  --tenant-id T), one row each with its totals over the range
  --format F      table (the default on a terminal), json (the default otherwise) or csv; -o F is the same

Examples:
  sluice usage report --month 2026-11 --by project --format csv > november.csv
  sluice usage report --scope project/prj_01… --from 2026-01 --to 2026-06 --group month --by model
  sluice usage report -o json
`

// usageReportFlags are the flags of sluice usage report.
var usageReportFlags = []string{"scope", "month", "from", "to", "group", "by", "format", "o", "tenant_id"}

// usageReport prints a scope's history (GET /api/v1/usage/history), or
// with --by project every project's totals over the range.
func usageReport(ctx context.Context, c *client.Client, stdout io.Writer, args []string, flags map[string]string) error {
	if len(args) > 0 {
		return usageError(fmt.Sprintf("usage report takes no arguments but flags, got %q (sluice usage report -h)", args))
	}
	for k := range flags {
		if !contains(usageReportFlags, k) {
			return usageError(fmt.Sprintf("usage report: unknown flag --%s (sluice usage report -h)", strings.ReplaceAll(k, "_", "-")))
		}
	}
	format := flags["format"]
	if o := flags["o"]; o != "" {
		if format != "" && format != o {
			return usageError("usage report: --format and -o say different things")
		}
		format = o
	}
	switch format {
	case "":
		format = "json"
		if isTerminal(stdout) {
			format = "table"
		}
	case "table", "json", "csv":
	default:
		return usageError(fmt.Sprintf("usage report: --format must be table, json or csv, not %q", format))
	}
	q := url.Values{}
	if m := flags["month"]; m != "" {
		if flags["from"] != "" || flags["to"] != "" {
			return usageError("usage report: --month or --from/--to, not both")
		}
		q.Set("from", m)
		q.Set("to", m)
	}
	for _, k := range []string{"scope", "from", "to", "group"} {
		if v := flags[k]; v != "" {
			q.Set(k, v)
		}
	}
	switch by := flags["by"]; by {
	case "":
	case "model":
		q.Set("by", "model")
	case "project":
		if flags["scope"] != "" || flags["group"] != "" {
			return usageError("usage report --by project reports each project's totals over the range: leave out --scope and --group")
		}
		return projectReport(ctx, c, stdout, q, flags["tenant_id"], format)
	default:
		return usageError(fmt.Sprintf("usage report: --by must be model or project, not %q", by))
	}
	if flags["tenant_id"] != "" {
		return usageError("usage report: --tenant-id goes with --by project")
	}
	if format == "csv" {
		// The server's own CSV, byte for byte.
		q.Set("format", "csv")
		var raw json.RawMessage
		if err := c.Do(ctx, http.MethodGet, "/api/v1/usage/history", q, nil, &raw); err != nil {
			return err
		}
		_, err := stdout.Write(raw)
		return err
	}
	if format == "json" {
		return show(ctx, c, stdout, http.MethodGet, "/api/v1/usage/history", q, nil)
	}
	var h historyView
	if err := getHistory(ctx, c, q, &h); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(stdout, "%s, %s to %s (%s), by %s\n", h.Scope, h.From, h.To, h.TimeZone, h.Group)
	byModel := h.By == "model"
	head := "PERIOD\t"
	if byModel {
		head += "MODEL\t"
	}
	fmt.Fprintln(tw, head+"REQUESTS\tINPUT_TOKENS\tOUTPUT_TOKENS\tTOKENS\tGPU_SECONDS\tCOST_USD\t")
	for _, r := range h.Rows {
		line := r.Period + "\t"
		if byModel {
			line += r.Model + "\t"
		}
		fmt.Fprintln(tw, line+r.cells())
	}
	line := "TOTAL\t"
	if byModel {
		line += "\t"
	}
	fmt.Fprintln(tw, line+h.Totals.cells())
	return tw.Flush()
}

// historyView is the history JSON as the CLI reads it, numbers as written.
type historyView struct {
	Scope    string `json:"scope"`
	TimeZone string `json:"time_zone"`
	From     string `json:"from"`
	To       string `json:"to"`
	Group    string `json:"group"`
	By       string `json:"by"`
	Rows     []struct {
		Period string `json:"period"`
		Model  string `json:"model"`
		useView
	} `json:"rows"`
	Totals useView `json:"totals"`
}

type useView struct {
	Requests     json.Number `json:"requests"`
	InputTokens  json.Number `json:"input_tokens"`
	OutputTokens json.Number `json:"output_tokens"`
	Tokens       json.Number `json:"tokens"`
	GPUSeconds   json.Number `json:"gpu_seconds"`
	CostUSD      json.Number `json:"cost_usd"`
}

func (u useView) values() []string {
	return []string{u.Requests.String(), u.InputTokens.String(), u.OutputTokens.String(), u.Tokens.String(), u.GPUSeconds.String(), u.CostUSD.String()}
}

func (u useView) cells() string { return strings.Join(u.values(), "\t") + "\t" }

// add adds o to u exactly: counts as integers, GPU seconds and USD as
// thousandths and millionths.
func (u *useView) add(o useView) error {
	for _, f := range []struct {
		dst    *json.Number
		v      json.Number
		places int
	}{{&u.Requests, o.Requests, 0}, {&u.InputTokens, o.InputTokens, 0}, {&u.OutputTokens, o.OutputTokens, 0}, {&u.Tokens, o.Tokens, 0},
		{&u.GPUSeconds, o.GPUSeconds, 3}, {&u.CostUSD, o.CostUSD, 6}} {
		a, err := scaled(f.dst.String(), f.places)
		if err != nil {
			return err
		}
		b, err := scaled(f.v.String(), f.places)
		if err != nil {
			return err
		}
		*f.dst = json.Number(usage.Decimal(a+b, f.places))
	}
	return nil
}

// scaled reads a decimal ("1.5") as a whole number of 10^-places units.
func scaled(s string, places int) (int64, error) {
	if s == "" {
		return 0, nil
	}
	whole, frac, _ := strings.Cut(s, ".")
	if len(frac) > places {
		return 0, fmt.Errorf("the server sent %q, finer than %d decimals", s, places)
	}
	n, err := strconv.ParseInt(whole+frac+strings.Repeat("0", places-len(frac)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the server sent %q, not a number: %w", s, err)
	}
	return n, nil
}

func getHistory(ctx context.Context, c *client.Client, q url.Values, h *historyView) error {
	var raw json.RawMessage
	if err := c.Do(ctx, http.MethodGet, "/api/v1/usage/history", q, nil, &raw); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(h); err != nil {
		return fmt.Errorf("decode usage history: %w", err)
	}
	return nil
}

// projectUse is one project's totals over a range.
type projectUse struct {
	Project   string `json:"project"`
	ProjectID string `json:"project_id"`
	From      string `json:"from"`
	To        string `json:"to"`
	useView
}

// projectReport lists every project the caller sees (of tenantID, when
// set) and prints each one's totals over the range: one history call per
// project, so every row is what GET /api/v1/usage/history answers for it.
func projectReport(ctx context.Context, c *client.Client, stdout io.Writer, q url.Values, tenantID, format string) error {
	var projects []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	list := url.Values{"limit": {"1000"}}
	if tenantID != "" {
		list.Set("tenant_id", tenantID)
	}
	for {
		var page struct {
			Items []struct {
				ID   string `json:"id"`
				Name string `json:"name"`
			} `json:"items"`
			Next string `json:"next"`
		}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/admin/projects", list, nil, &page); err != nil {
			return err
		}
		projects = append(projects, page.Items...)
		if page.Next == "" || len(page.Items) == 0 {
			break
		}
		list.Set("after", page.Next)
	}
	items := []projectUse{}
	var from, to string
	total := useView{}
	q.Set("group", "month")
	for _, p := range projects {
		q.Set("scope", "project/"+p.ID)
		var h historyView
		if err := getHistory(ctx, c, q, &h); err != nil {
			return fmt.Errorf("project %s (%s): %w", p.Name, p.ID, err)
		}
		from, to = h.From, h.To
		items = append(items, projectUse{Project: p.Name, ProjectID: p.ID, From: h.From, To: h.To, useView: h.Totals})
		if err := total.add(h.Totals); err != nil {
			return err
		}
	}
	switch format {
	case "json":
		out, _ := json.MarshalIndent(map[string]any{"from": from, "to": to, "items": items, "totals": total}, "", "  ")
		_, err := fmt.Fprintf(stdout, "%s\n", out)
		return err
	case "csv":
		cw := csv.NewWriter(stdout)
		cw.UseCRLF = true
		_ = cw.Write([]string{"project", "project_id", "from", "to", "requests", "input_tokens", "output_tokens", "tokens", "gpu_seconds", "cost_usd"})
		for _, it := range items {
			_ = cw.Write(append([]string{it.Project, it.ProjectID, it.From, it.To}, it.values()...))
		}
		cw.Flush()
		return cw.Error()
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(stdout, "projects, %s to %s\n", from, to)
	fmt.Fprintln(tw, "PROJECT\tREQUESTS\tINPUT_TOKENS\tOUTPUT_TOKENS\tTOKENS\tGPU_SECONDS\tCOST_USD\t")
	for _, it := range items {
		fmt.Fprintln(tw, it.Project+"\t"+it.cells())
	}
	fmt.Fprintln(tw, "TOTAL\t"+total.cells())
	return tw.Flush()
}

// isTerminal reports whether w is a terminal, where people read tables.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
