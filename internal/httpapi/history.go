package httpapi

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// HistoryReader sums a scope's events in the usage ledger per day and
// model (sqlstore.Store).
type HistoryReader interface {
	UsageHistory(ctx context.Context, q usage.HistoryQuery) ([]usage.HistoryRow, error)
}

// The bounds of one history call: the days it may span, and the rows it
// may answer (only a split by model comes near: days × models).
const (
	MaxHistoryDays = 400
	MaxHistoryRows = 10_000
)

func (s *Server) historyRoutes(mux *routes) {
	mux.HandleFunc("GET /api/v1/usage/history", s.usageHistory)
}

// historyReader is the usage store's history reader: the store that keeps
// the quarantine keeps the ledger too.
func (s *Server) historyReader() (HistoryReader, bool) {
	r, ok := s.Quarantine.(HistoryReader)
	return r, ok
}

// historyUse is one row's (or the totals') use, in the units people bill
// in. GPU seconds and USD are exact decimals of the ledger's milliseconds
// and micro-USD, written as JSON numbers.
type historyUse struct {
	Requests     int64       `json:"requests"`
	InputTokens  int64       `json:"input_tokens"`
	OutputTokens int64       `json:"output_tokens"`
	Tokens       int64       `json:"tokens"`
	GPUSeconds   json.Number `json:"gpu_seconds"`
	CostUSD      json.Number `json:"cost_usd"`
}

func useOf(r *usage.HistoryRow) historyUse {
	return historyUse{Requests: r.Requests, InputTokens: r.InputTokens, OutputTokens: r.OutputTokens, Tokens: r.Tokens(),
		GPUSeconds: json.Number(usage.Decimal(r.GPUMillis, 3)), CostUSD: json.Number(usage.Decimal(r.CostMicros, 6))}
}

type historyRow struct {
	Period string  `json:"period"`
	Model  *string `json:"model,omitempty"`
	historyUse
}

type historyResponse struct {
	Scope    string       `json:"scope"`
	TenantID string       `json:"tenant_id,omitempty"`
	TimeZone string       `json:"time_zone"`
	From     string       `json:"from"`
	To       string       `json:"to"`
	Group    string       `json:"group"`
	By       string       `json:"by,omitempty"`
	Rows     []historyRow `json:"rows"`
	Totals   historyUse   `json:"totals"`
}

// usageHistory reports one scope's use per day or month (and model) over a
// range of days, summed from the usage ledger: JSON, or CSV with
// ?format=csv or Accept: text/csv. See docs/usage-history.md.
func (s *Server) usageHistory(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p, _ := tenancy.PrincipalFrom(ctx)
	var scope, from, to, format string
	group := "day"
	byModel := false
	for name, vals := range r.URL.Query() {
		v := vals[len(vals)-1]
		switch name {
		case "scope":
			scope = v
		case "from":
			from = v
		case "to":
			to = v
		case "group":
			if v != "day" && v != "month" {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "group", "group must be day or month, not %q", v))
				return
			}
			group = v
		case "by":
			if v != "model" && v != "" {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "by", "by must be model (or left out), not %q", v))
				return
			}
			byModel = v == "model"
		case "format":
			if v != "json" && v != "csv" {
				writeError(w, r, s.Log, errs.Field(errs.Invalid, "format", "format must be json or csv, not %q", v))
				return
			}
			format = v
		default:
			writeError(w, r, s.Log, errs.Field(errs.Invalid, name, "unknown query parameter %q", name))
			return
		}
	}
	if format == "" {
		format = "json"
		if acceptsCSV(r.Header.Get("Accept")) {
			format = "csv"
		}
	}
	if scope == "" {
		scope = policy.KindUser + "/" + p.UserID
	}
	tenantID, err := s.historyScope(ctx, p, scope)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	reader, ok := s.historyReader()
	if !ok {
		writeError(w, r, s.Log, errs.E(errs.NotFound, "this server keeps no usage ledger"))
		return
	}
	utc := scope == policy.GlobalScope
	loc := time.UTC
	if !utc {
		loc = s.Meter.Policy().Current().Location(tenantID)
	}
	first, last, err := historyRange(from, to, time.Now().In(loc))
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	rows, err := reader.UsageHistory(ctx, usage.HistoryQuery{Scope: scope, TenantID: tenantID, From: first, To: last, UTC: utc,
		ByModel: byModel, Limit: MaxHistoryRows + 1})
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	if len(rows) > MaxHistoryRows {
		writeError(w, r, s.Log, errs.Field(errs.Invalid, "by", "the history by model of %s from %s to %s has more than %d rows; ask for fewer days",
			scope, first, last, MaxHistoryRows))
		return
	}
	if group == "month" {
		rows = usage.ByMonth(rows)
	}
	total := usage.Total(rows)
	out := historyResponse{Scope: scope, TenantID: tenantID, TimeZone: loc.String(), From: first, To: last, Group: group,
		Rows: make([]historyRow, 0, len(rows)), Totals: useOf(&total)}
	if byModel {
		out.By = "model"
	}
	for i := range rows {
		row := historyRow{Period: rows[i].Period, historyUse: useOf(&rows[i])}
		if byModel {
			row.Model = &rows[i].Model
		}
		out.Rows = append(out.Rows, row)
	}
	if format == "csv" {
		writeHistoryCSV(w, &out)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// historyScope authorises reading scope's history exactly as GET
// /api/v1/usage?scope= authorises reading its meters (a member: the scopes
// of their own chain; a tenant admin: any scope of their tenant; a
// platform admin: any), and returns the scope's tenant. The global scope,
// every tenant's use summed, is the platform admins' only.
func (s *Server) historyScope(ctx context.Context, p tenancy.Principal, scope string) (string, error) {
	if scope == policy.GlobalScope && !p.IsPlatformAdmin() {
		return "", errs.Field(errs.NotFound, "scope", "scope %s not found", scope)
	}
	if _, _, err := policy.ParseScope("scope", scope); err != nil {
		return "", err
	}
	if !p.AdminOf(p.TenantID) {
		if err := s.mayReadScope(ctx, p, scope); err != nil {
			return "", err
		}
	}
	v, err := s.Policy.Limits(ctx, scope) // authorises the read, and finds the tenant
	if err != nil {
		return "", err
	}
	return v.TenantID, nil
}

// historyRange resolves from and to (days such as 2026-11-01, or months
// such as 2026-11: from its first day, to its last) into the first and last
// day of the range, both included. Left out, from is the first day of the
// month of to (or of now) and to the last day of the month of now.
func historyRange(from, to string, now time.Time) (string, string, error) {
	var first, last time.Time
	var toMonth bool
	var err error
	if from != "" {
		if first, _, err = parseHistoryDay("from", from); err != nil {
			return "", "", err
		}
	}
	if to != "" {
		if last, toMonth, err = parseHistoryDay("to", to); err != nil {
			return "", "", err
		}
		if toMonth {
			last = last.AddDate(0, 1, -1)
		}
	} else {
		last = time.Date(now.Year(), now.Month()+1, 0, 0, 0, 0, 0, time.UTC)
	}
	if from == "" {
		first = time.Date(last.Year(), last.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	if first.After(last) {
		return "", "", errs.Field(errs.Invalid, "from", "from %s is after to %s", first.Format("2006-01-02"), last.Format("2006-01-02"))
	}
	if days := int(last.Sub(first)/(24*time.Hour)) + 1; days > MaxHistoryDays {
		return "", "", errs.Field(errs.Invalid, "to", "from %s to %s spans %d days; one call spans at most %d",
			first.Format("2006-01-02"), last.Format("2006-01-02"), days, MaxHistoryDays)
	}
	return first.Format("2006-01-02"), last.Format("2006-01-02"), nil
}

// parseHistoryDay reads a day (2026-11-01) or a month (2026-11, its first
// day, isMonth set), naming field when it is neither.
func parseHistoryDay(field, v string) (time.Time, bool, error) {
	if t, err := time.Parse("2006-01-02", v); err == nil {
		return t, false, nil
	}
	if t, err := time.Parse("2006-01", v); err == nil {
		return t, true, nil
	}
	return time.Time{}, false, errs.Field(errs.Invalid, field, "%s %q is not a day such as 2026-11-01 or a month such as 2026-11", field, v)
}

// acceptsCSV reports whether an Accept header asks for text/csv before
// JSON (a browser's */* does not).
func acceptsCSV(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if q, ok := params["q"]; ok {
			if f, err := strconv.ParseFloat(q, 64); err == nil && f == 0 {
				continue
			}
		}
		switch mt {
		case "text/csv":
			return true
		case "application/json":
			return false
		}
	}
	return false
}

// historyCSVHeader is the CSV's header row; model follows period when the
// history is by model.
var historyCSVHeader = []string{"period", "requests", "input_tokens", "output_tokens", "tokens", "gpu_seconds", "cost_usd"}

// writeHistoryCSV writes the rows as RFC 4180 CSV (CRLF, quoted where
// needed), one line per row after the header, the numbers as in the JSON.
// No totals line: every line is a row, so sums over the file hold.
func writeHistoryCSV(w http.ResponseWriter, out *historyResponse) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	name := "usage-" + strings.NewReplacer("/", "-", "@", "-", ":", "-").Replace(out.Scope) + "-" + out.From + "-" + out.To + ".csv"
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	w.WriteHeader(http.StatusOK)
	cw := csv.NewWriter(w)
	cw.UseCRLF = true
	header := historyCSVHeader
	if out.By == "model" {
		header = append([]string{"period", "model"}, historyCSVHeader[1:]...)
	}
	_ = cw.Write(header)
	for _, row := range out.Rows {
		rec := make([]string, 0, len(header))
		rec = append(rec, row.Period)
		if row.Model != nil {
			rec = append(rec, csvText(*row.Model))
		}
		u := row.historyUse
		rec = append(rec, strconv.FormatInt(u.Requests, 10), strconv.FormatInt(u.InputTokens, 10), strconv.FormatInt(u.OutputTokens, 10),
			strconv.FormatInt(u.Tokens, 10), u.GPUSeconds.String(), u.CostUSD.String())
		_ = cw.Write(rec)
	}
	cw.Flush()
}

// csvText keeps a text cell from being read as a formula by a spreadsheet
// (a model name is the caller's text): one that starts with = + - @ or a
// tab or carriage return gets a leading apostrophe, as OWASP advises.
func csvText(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}
