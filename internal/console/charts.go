package console

import (
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/usage"
)

// chartBar is one bar of a chart: a label and its tokens.
type chartBar struct {
	Label string
	Value int64
}

// barChart draws bars as an inline SVG (no script, no style attribute:
// the page's CSP allows neither inline), horizontal so long labels fit
// at 375 px. Each bar carries its value in a <title> and as text.
func barChart(title string, bars []chartBar) template.HTML {
	const w, rowH, labelW = 600, 22, 170
	if len(bars) == 0 {
		return template.HTML(`<p class="muted">No use in this period.</p>`)
	}
	var maxV int64 = 1
	for _, b := range bars {
		maxV = max(maxV, b.Value)
	}
	h := rowH*len(bars) + 8
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg viewBox="0 0 %d %d" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg">`, w, h, template.HTMLEscapeString(title))
	for i, b := range bars {
		y := 4 + i*rowH
		bw := int(float64(w-labelW-90) * float64(b.Value) / float64(maxV))
		if b.Value > 0 {
			bw = max(bw, 1)
		}
		label := template.HTMLEscapeString(clip(b.Label, 24))
		val := template.HTMLEscapeString(groupDigits(b.Value))
		fmt.Fprintf(&sb, `<g><title>%s: %s tokens</title><text x="0" y="%d">%s</text><rect x="%d" y="%d" width="%d" height="%d" rx="2"></rect><text x="%d" y="%d">%s</text></g>`,
			template.HTMLEscapeString(b.Label), val, y+15, label, labelW, y+3, bw, rowH-8, labelW+bw+6, y+15, val)
	}
	fmt.Fprintf(&sb, `<line class="axis" x1="%d" y1="0" x2="%d" y2="%d"></line></svg>`, labelW, labelW, h)
	return template.HTML(sb.String())
}

type chartsData struct {
	Scope, Name, Month, TimeZone string
	Months                       []string
	ByDay, ByModel, ByProject    template.HTML
	Total                        int64
	NoLedger                     bool
}

// chartsPage draws a scope's use in one month (its tenant's zone) per
// day, per model and, for a tenant or department, per project: from the
// usage ledger, as GET /api/v1/usage/history sums it.
func (c *Console) chartsPage(w http.ResponseWriter, r *req) {
	q := r.URL.Query()
	scope := q.Get("scope")
	if scope == "" {
		if r.p.TenantID == "" {
			c.fail(w, r.Request, r, errs.Field(errs.Invalid, "scope", "pick a scope: open a tenant from Admin and follow its chart link"))
			return
		}
		scope = policy.ScopeName(policy.KindTenant, r.p.TenantID)
	}
	if scope == policy.GlobalScope {
		c.fail(w, r.Request, r, errs.Field(errs.Invalid, "scope", "the charts are per tenant; the platform's totals are in sluice usage report"))
		return
	}
	v, err := c.Policy.Limits(r.ctx(), scope) // authorises the read
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	loc := c.Meter.Policy().Current().Location(v.TenantID)
	now := c.Now().In(loc)
	month := q.Get("month")
	start, err := time.ParseInLocation("2006-01", month, time.UTC)
	if month == "" {
		start, err = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC), nil
	}
	if err != nil {
		c.fail(w, r.Request, r, errs.Field(errs.Invalid, "month", "month %q is not a month such as 2026-11", month))
		return
	}
	month = start.Format("2006-01")
	d := chartsData{Scope: scope, Name: c.scopeName(r.ctx(), v.TenantID, scope), Month: month, TimeZone: loc.String()}
	for i := 0; i < 6; i++ {
		d.Months = append(d.Months, time.Date(now.Year(), now.Month()-time.Month(i), 1, 0, 0, 0, 0, time.UTC).Format("2006-01"))
	}
	if c.Ledger == nil {
		d.NoLedger = true
		c.render(w, r, http.StatusOK, "charts", "Charts", "admin", d)
		return
	}
	last := start.AddDate(0, 1, -1)
	rows, err := c.Ledger.UsageHistory(r.ctx(), usage.HistoryQuery{Scope: scope, TenantID: v.TenantID, From: start.Format("2006-01-02"),
		To: last.Format("2006-01-02"), ByModel: true, Limit: 10_001})
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	days := map[string]int64{}
	models := map[string]int64{}
	for i := range rows {
		t := rows[i].Tokens()
		days[rows[i].Period] += t
		m := rows[i].Model
		if m == "" {
			m = "(no model)"
		}
		models[m] += t
		d.Total += t
	}
	var byDay []chartBar
	for day := start; !day.After(last); day = day.AddDate(0, 0, 1) {
		k := day.Format("2006-01-02")
		byDay = append(byDay, chartBar{Label: day.Format("Mon 2 Jan"), Value: days[k]})
	}
	d.ByDay = barChart("tokens per day", byDay)
	var byModel []chartBar
	for _, m := range sortedKeys(models) {
		byModel = append(byModel, chartBar{Label: m, Value: models[m]})
	}
	sort.SliceStable(byModel, func(i, j int) bool { return byModel[i].Value > byModel[j].Value })
	d.ByModel = barChart("tokens per model", byModel)
	kind, _, _ := strings.Cut(scope, "/")
	if kind == policy.KindTenant || kind == policy.KindDepartment {
		ru, err := c.Ledger.KindRollups(r.ctx(), policy.KindProject, v.TenantID, []string{month})
		if err != nil {
			c.fail(w, r.Request, r, err)
			return
		}
		snap := c.Meter.Policy().Current()
		var byProject []chartBar
		for _, x := range ru {
			_, pid, _ := strings.Cut(x.Scope, "/")
			if kind == policy.KindDepartment {
				in := false
				for _, a := range snap.Ancestors(policy.KindProject, pid, v.TenantID) {
					in = in || a == scope
				}
				if !in {
					continue
				}
			}
			byProject = append(byProject, chartBar{Label: c.scopeName(r.ctx(), v.TenantID, x.Scope), Value: x.Tokens})
		}
		sort.SliceStable(byProject, func(i, j int) bool { return byProject[i].Value > byProject[j].Value })
		d.ByProject = barChart("tokens per project", byProject)
	}
	c.render(w, r, http.StatusOK, "charts", "Charts", "admin", d)
}
