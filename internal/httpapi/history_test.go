package httpapi_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/usage"
)

// historyBody is GET /api/v1/usage/history's JSON, numbers kept as written.
type historyBody struct {
	Scope    string `json:"scope"`
	TenantID string `json:"tenant_id"`
	TimeZone string `json:"time_zone"`
	From     string `json:"from"`
	To       string `json:"to"`
	Group    string `json:"group"`
	By       string `json:"by"`
	Rows     []struct {
		Period string  `json:"period"`
		Model  *string `json:"model"`
		historyNumbers
	} `json:"rows"`
	Totals historyNumbers `json:"totals"`
	Error  struct {
		Code  string `json:"code"`
		Field string `json:"field"`
	} `json:"error"`
}

type historyNumbers struct {
	Requests     json.Number `json:"requests"`
	InputTokens  json.Number `json:"input_tokens"`
	OutputTokens json.Number `json:"output_tokens"`
	Tokens       json.Number `json:"tokens"`
	GPUSeconds   json.Number `json:"gpu_seconds"`
	CostUSD      json.Number `json:"cost_usd"`
}

func (n historyNumbers) strings() []string {
	return []string{n.Requests.String(), n.InputTokens.String(), n.OutputTokens.String(), n.Tokens.String(), n.GPUSeconds.String(), n.CostUSD.String()}
}

// numbersOf is what the API must show for use summed from events.
func numbersOf(r usage.HistoryRow) historyNumbers {
	i := func(v int64) json.Number { return json.Number(strconv.FormatInt(v, 10)) }
	return historyNumbers{Requests: i(r.Requests), InputTokens: i(r.InputTokens), OutputTokens: i(r.OutputTokens), Tokens: i(r.Tokens()),
		GPUSeconds: json.Number(usage.Decimal(r.GPUMillis, 3)), CostUSD: json.Number(usage.Decimal(r.CostMicros, 6))}
}

// history calls the history route; accept, when set, is the Accept header.
func (e *env) history(key, query, accept string) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequest("GET", e.url+"/api/v1/usage/history"+query, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body
}

func (e *env) historyJSON(key, query string, want int) historyBody {
	e.t.Helper()
	status, _, body := e.history(key, query, "")
	if status != want {
		e.t.Fatalf("GET history%s: got status %d, want %d: %s", query, status, want, body)
	}
	var h historyBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&h); err != nil {
		e.t.Fatalf("GET history%s: %v: %s", query, err, body)
	}
	return h
}

// historyWorld records, through the real store, the events of two tenants'
// worlds over two days and two models (and a day's edge in Berlin), and
// returns them.
func historyWorld(t *testing.T, e *env) (a, b world, events []usage.Event) {
	t.Helper()
	a, b = e.makeWorld("acme"), e.makeWorld("beta")
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	chain := func(w world, user, keyID string) []string {
		return []string{"global", "tenant/" + w.tenant, "department/" + w.dept, "department/" + w.subDept, "project/" + w.project,
			"user/" + user, "membership/" + user + "@" + w.project, "key/" + keyID}
	}
	n := 0
	ev := func(w world, user, keyID string, at time.Time, model string, in, out, gpuMS, cost int64) usage.Event {
		n++
		return usage.Event{ID: fmt.Sprintf("tkt_hist_%02d", n), At: at, TenantID: w.tenant, UserID: user, ProjectID: w.project,
			Kind: "model_call", Model: model, Requests: 1, InputTokens: in, OutputTokens: out, GPUMillis: gpuMS, CostMicros: cost,
			Scopes: chain(w, user, keyID), Loc: berlin}
	}
	day := func(d, h, m int) time.Time { return time.Date(2026, 11, d, h, m, 0, 0, time.UTC) }
	events = []usage.Event{
		ev(a, a.member, a.memberKeyID, day(3, 9, 0), "gpt-4o", 1200, 340, 1500, 12_345),
		ev(a, a.member, a.memberKeyID, day(3, 10, 0), "llama-70b", 800, 200, 61_001, 7),
		// 23:30 UTC on 3 November is 00:30 on 4 November in Berlin.
		ev(a, a.member, a.memberKeyID, day(3, 23, 30), "gpt-4o", 5, 6, 0, 1_000_001),
		ev(a, a.member, a.memberKeyID, day(4, 12, 0), "llama-70b", 70, 30, 999, 3),
		ev(a, a.admin, a.adminKeyID, day(4, 13, 0), "gpt-4o", 10, 10, 10, 10),
		// October in Berlin: outside November.
		ev(a, a.member, a.memberKeyID, time.Date(2026, 10, 31, 22, 59, 0, 0, time.UTC), "gpt-4o", 1, 1, 1, 1),
		ev(b, b.member, b.memberKeyID, day(3, 9, 0), "gpt-4o", 100_000, 100_000, 100_000, 100_000),
		ev(b, b.member, b.memberKeyID, day(4, 9, 0), "llama-70b", 3, 4, 5, 6),
	}
	if _, err := e.store.RecordUsage(context.Background(), events); err != nil {
		t.Fatal(err)
	}
	return a, b, events
}

// ledgerSum sums the events whose chain holds scope on Berlin days in
// [from, to], per day (or month) and model, as the API must report them.
func ledgerSum(events []usage.Event, scope, from, to string, month, byModel bool) ([]usage.HistoryRow, usage.HistoryRow) {
	sums := map[[2]string]*usage.HistoryRow{}
	var keys [][2]string
	var total usage.HistoryRow
	for _, e := range events {
		day := usage.DayPeriod(e.At, e.Loc)
		if !slices.Contains(e.Scopes, scope) || day < from || day > to {
			continue
		}
		k := [2]string{day, ""}
		if month {
			k[0] = day[:7]
		}
		if byModel {
			k[1] = e.Model
		}
		if sums[k] == nil {
			sums[k] = &usage.HistoryRow{Period: k[0], Model: k[1]}
			keys = append(keys, k)
		}
		u := usage.HistoryRow{Requests: e.Requests, InputTokens: e.InputTokens, OutputTokens: e.OutputTokens, GPUMillis: e.GPUMillis, CostMicros: e.CostMicros}
		sums[k].Add(&u)
		total.Add(&u)
	}
	slices.SortFunc(keys, func(a, b [2]string) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })
	var rows []usage.HistoryRow
	for _, k := range keys {
		rows = append(rows, *sums[k])
	}
	return rows, total
}

// TestUsageHistoryEqualsLedger: per day, per month and per model, every
// row and the totals equal the sums of the recorded events to the unit,
// and another tenant's events never show.
func TestUsageHistoryEqualsLedger(t *testing.T) {
	e := newEnv(t)
	a, b, events := historyWorld(t, e)
	for _, c := range []struct {
		key, scope     string
		group          string
		byModel, month bool
	}{
		{a.adminKey, "tenant/" + a.tenant, "day", true, false},
		{a.adminKey, "tenant/" + a.tenant, "month", true, true},
		{a.adminKey, "tenant/" + a.tenant, "day", false, false},
		{a.adminKey, "project/" + a.project, "month", false, true},
		{a.adminKey, "user/" + a.member, "day", true, false},
		{a.memberKey, "key/" + a.memberKeyID, "day", true, false},
		{a.memberKey, "membership/" + a.member + "@" + a.project, "day", false, false},
		{b.adminKey, "tenant/" + b.tenant, "day", true, false},
		{e.admin, "department/" + b.dept, "month", true, true},
	} {
		q := "?scope=" + url.QueryEscape(c.scope) + "&from=2026-11-01&to=2026-11-30&group=" + c.group
		if c.byModel {
			q += "&by=model"
		}
		h := e.historyJSON(c.key, q, 200)
		rows, total := ledgerSum(events, c.scope, "2026-11-01", "2026-11-30", c.month, c.byModel)
		if len(h.Rows) != len(rows) || len(rows) == 0 {
			t.Fatalf("%s: got %d rows, want %d: %+v", q, len(h.Rows), len(rows), h.Rows)
		}
		for i, r := range rows {
			got := h.Rows[i]
			if got.Period != r.Period || got.historyNumbers != numbersOf(r) || (got.Model != nil) != c.byModel ||
				(c.byModel && *got.Model != r.Model) {
				t.Fatalf("%s: row %d: got %+v, want %+v", q, i, got, r)
			}
		}
		if h.Totals != numbersOf(total) {
			t.Fatalf("%s: totals: got %+v, want %+v", q, h.Totals, numbersOf(total))
		}
		if h.TimeZone != "Europe/Berlin" || h.From != "2026-11-01" || h.To != "2026-11-30" || h.Scope != c.scope {
			t.Fatalf("%s: got %+v", q, h)
		}
	}
	// The fixed numbers, by hand: acme's tenant in November, both models.
	h := e.historyJSON(a.adminKey, "?scope=tenant/"+a.tenant+"&from=2026-11&to=2026-11", 200)
	if want := (historyNumbers{"5", "2085", "586", "2671", "63.51", "1.012366"}); h.Totals != want {
		t.Fatalf("acme's November: got %+v, want %+v", h.Totals, want)
	}
	if len(h.Rows) != 2 || h.Rows[0].Period != "2026-11-03" || h.Rows[1].Period != "2026-11-04" || h.Rows[1].Requests != "3" {
		t.Fatalf("acme's November by day: got %+v, want 3 and 4 November, 3 requests on the 4th (one at 00:30 Berlin)", h.Rows)
	}
	// The global scope sums every tenant, by UTC day (platform admins).
	g := e.historyJSON(e.admin, "?scope=global&from=2026-10-31&to=2026-11-30&group=month", 200)
	if len(g.Rows) != 2 || g.Rows[0].Period != "2026-10" || g.Rows[1].Requests != "7" || g.TimeZone != "UTC" {
		t.Fatalf("global: got %+v, want October (one event) and November (seven)", g.Rows)
	}
}

// TestUsageHistoryCSV: the CSV parses with encoding/csv and says what the
// JSON says, line for line; Accept: text/csv asks for it as ?format=csv.
func TestUsageHistoryCSV(t *testing.T) {
	e := newEnv(t)
	a, _, _ := historyWorld(t, e)
	for _, byModel := range []bool{false, true} {
		q := "?scope=tenant/" + a.tenant + "&from=2026-11-01&to=2026-11-30"
		if byModel {
			q += "&by=model"
		}
		h := e.historyJSON(a.adminKey, q, 200)
		status, header, viaFormat := e.history(a.adminKey, q+"&format=csv", "")
		if status != 200 || !strings.HasPrefix(header.Get("Content-Type"), "text/csv") {
			t.Fatalf("format=csv: status %d, Content-Type %q: %s", status, header.Get("Content-Type"), viaFormat)
		}
		if !strings.Contains(header.Get("Content-Disposition"), "attachment") {
			t.Fatalf("Content-Disposition: got %q, want an attachment", header.Get("Content-Disposition"))
		}
		_, _, viaAccept := e.history(a.adminKey, q, "text/csv")
		if !bytes.Equal(viaFormat, viaAccept) {
			t.Fatalf("Accept: text/csv: got\n%s\nwant the same as format=csv:\n%s", viaAccept, viaFormat)
		}
		if !bytes.Contains(viaFormat, []byte("\r\n")) {
			t.Fatalf("CSV lines end in CRLF (RFC 4180): %q", viaFormat)
		}
		recs, err := csv.NewReader(bytes.NewReader(viaFormat)).ReadAll()
		if err != nil {
			t.Fatalf("CSV does not parse: %v\n%s", err, viaFormat)
		}
		header0 := []string{"period", "requests", "input_tokens", "output_tokens", "tokens", "gpu_seconds", "cost_usd"}
		if byModel {
			header0 = slices.Insert(header0, 1, "model")
		}
		if !slices.Equal(recs[0], header0) {
			t.Fatalf("CSV header: got %v, want %v", recs[0], header0)
		}
		if len(recs) != len(h.Rows)+1 || len(h.Rows) < 2 {
			t.Fatalf("CSV: got %d lines, want a header and the JSON's %d rows", len(recs), len(h.Rows))
		}
		for i, row := range h.Rows {
			want := append([]string{row.Period}, row.strings()...)
			if byModel {
				want = slices.Insert(want, 1, *row.Model)
			}
			if !slices.Equal(recs[i+1], want) {
				t.Fatalf("CSV line %d: got %v, want %v (the JSON's row)", i+1, recs[i+1], want)
			}
		}
	}
	// A browser's Accept gets JSON.
	if _, header, _ := e.history(a.adminKey, "?from=2026-11", "text/html,*/*;q=0.8"); !strings.HasPrefix(header.Get("Content-Type"), "application/json") {
		t.Fatalf("Accept */*: got %q, want JSON", header.Get("Content-Type"))
	}
}

// TestUsageHistoryRights: members read the scopes of their own chain,
// tenant admins every scope of their tenant, platform admins everything;
// another tenant's scope, and the global one, are not found.
func TestUsageHistoryRights(t *testing.T) {
	e := newEnv(t)
	a, b, events := historyWorld(t, e)
	const nov = "&from=2026-11-01&to=2026-11-30"
	for _, c := range []struct {
		name, key, scope string
		status           int
	}{
		{"member, own user (the default)", a.memberKey, "", 200},
		{"member, own project", a.memberKey, "project/" + a.project, 200},
		{"member, own department", a.memberKey, "department/" + a.dept, 200},
		{"member, own tenant", a.memberKey, "tenant/" + a.tenant, 200},
		{"member, own key", a.memberKey, "key/" + a.memberKeyID, 200},
		{"member, another user", a.memberKey, "user/" + a.other, 404},
		{"member, another's key", a.memberKey, "key/" + a.adminKeyID, 404},
		{"member, another tenant", a.memberKey, "tenant/" + b.tenant, 404},
		{"member, another tenant's user", a.memberKey, "user/" + b.member, 404},
		{"member, global", a.memberKey, "global", 404},
		{"tenant admin, a member", a.adminKey, "user/" + a.member, 200},
		{"tenant admin, a member's key", a.adminKey, "key/" + a.memberKeyID, 200},
		{"tenant admin, another tenant", a.adminKey, "tenant/" + b.tenant, 404},
		{"tenant admin, another tenant's project", a.adminKey, "project/" + b.project, 404},
		{"tenant admin, another tenant's key", a.adminKey, "key/" + b.memberKeyID, 404},
		{"tenant admin, global", a.adminKey, "global", 404},
		{"platform admin, a tenant", e.admin, "tenant/" + b.tenant, 200},
		{"platform admin, a user", e.admin, "user/" + a.member, 200},
		{"platform admin, global", e.admin, "global", 200},
		{"no such scope", e.admin, "project/prj_nothere", 404},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := "?scope=" + url.QueryEscape(c.scope) + nov
			if c.scope == "" {
				q = "?" + nov[1:]
			}
			h := e.historyJSON(c.key, q, c.status)
			if c.status != 200 {
				if h.Error.Code != "not_found" || len(h.Rows) != 0 {
					t.Fatalf("got %+v, want not_found and no rows", h)
				}
				return
			}
			scope := c.scope
			if scope == "" {
				scope = "user/" + a.member
			}
			_, total := ledgerSum(events, scope, "2026-11-01", "2026-11-30", false, false)
			if h.Scope != scope || h.Totals != numbersOf(total) {
				t.Fatalf("got scope %s totals %+v, want %s %+v", h.Scope, h.Totals, scope, numbersOf(total))
			}
		})
	}
}

// TestUsageHistoryBadInput: a bad or too long range, an unknown group, by
// or format, an unknown parameter: 400 naming the field, and the default
// range is the current month in the tenant's zone.
func TestUsageHistoryBadInput(t *testing.T) {
	e := newEnv(t)
	a, _, _ := historyWorld(t, e)
	for _, c := range []struct{ query, field string }{
		{"?from=2026-13-01", "from"},
		{"?from=yesterday&to=2026-11-30", "from"},
		{"?from=2026-11-01&to=2026-11-31", "to"},
		{"?to=30.11.2026", "to"},
		{"?from=2026-11-30&to=2026-11-01", "from"},
		{"?from=2025-10-26&to=2026-11-30", "to"}, // 401 days
		{"?group=week", "group"},
		{"?by=user", "by"},
		{"?format=xml", "format"},
		{"?month=2026-11", "month"},
		{"?scope=tenant", "scope"},
		{"?scope=team/x", "scope"},
	} {
		h := e.historyJSON(a.adminKey, c.query, 400)
		if h.Error.Code != "invalid" || h.Error.Field != c.field {
			t.Errorf("%s: got %q naming %q, want invalid naming %q", c.query, h.Error.Code, h.Error.Field, c.field)
		}
	}
	// 400 days is the most one call spans.
	if h := e.historyJSON(a.adminKey, "?from=2025-10-27&to=2026-11-30", 200); h.From != "2025-10-27" {
		t.Fatalf("400 days: got %+v", h)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	before := time.Now().In(berlin)
	h := e.historyJSON(a.memberKey, "", 200)
	after := time.Now().In(berlin)
	var months []string
	for _, now := range []time.Time{before, after} {
		first := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		months = append(months, first.Format("2006-01-02")+" "+first.AddDate(0, 1, -1).Format("2006-01-02"))
	}
	if got := h.From + " " + h.To; !slices.Contains(months, got) || h.Group != "day" || h.Scope != "user/"+a.member {
		t.Fatalf("defaults: got %s group %s scope %s, want the month in Berlin (%v), by day, of the caller", got, h.Group, h.Scope, months)
	}
	// A month as from and to is its first and last day.
	if h := e.historyJSON(a.adminKey, "?from=2026-02&to=2026-02", 200); h.From != "2026-02-01" || h.To != "2026-02-28" {
		t.Fatalf("from=to=2026-02: got %s … %s", h.From, h.To)
	}
}
