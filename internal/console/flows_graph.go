package console

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
)

// The graph's geometry, in SVG user units (pixels at natural size).
const (
	boxW, boxH     = 200, 86
	colGap, rowGap = 56, 22
	margin         = 12
)

// nodeFigures are what one node used in a run: the sum of its traces (a
// node inside a loop has one per turn).
type nodeFigures struct {
	Status             string
	MS                 float64
	Input, Output      int64
	CostMicros         int64
	Calls              int
	Model, Error, Text string
}

func (f *nodeFigures) tokens() int64 { return f.Input + f.Output }

// figuresOf sums a run's traces by node, and lists the node ids in the
// order they first ran.
func figuresOf(traces []run.NodeTrace) (map[string]*nodeFigures, []string) {
	out := map[string]*nodeFigures{}
	var order []string
	for _, t := range traces {
		f := out[t.NodeID]
		if f == nil {
			f = &nodeFigures{}
			out[t.NodeID] = f
			order = append(order, t.NodeID)
		}
		f.Status = t.Status
		f.MS += t.DurationMS
		f.Input += t.Usage.InputTokens
		f.Output += t.Usage.OutputTokens
		f.CostMicros += t.Usage.CostMicros
		f.Calls += t.Calls
		if t.Model != "" {
			f.Model = t.Model
		}
		if t.Error != "" {
			f.Error = t.Error
		}
		if t.OutputPreview != "" {
			f.Text = t.OutputPreview
		}
	}
	return out, order
}

// hottest picks the most expensive nodes: by cost when any node cost
// money, else by tokens; those at least half the top node's, at most three,
// none that spent nothing.
func hottest(figs map[string]*nodeFigures) map[string]bool {
	byCost := false
	for _, f := range figs {
		if f.CostMicros > 0 {
			byCost = true
		}
	}
	metric := func(f *nodeFigures) int64 {
		if byCost {
			return f.CostMicros
		}
		return f.tokens()
	}
	ids := make([]string, 0, len(figs))
	for id, f := range figs {
		if metric(f) > 0 {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := metric(figs[ids[i]]), metric(figs[ids[j]])
		if a != b {
			return a > b
		}
		return ids[i] < ids[j]
	})
	hot := map[string]bool{}
	for i, id := range ids {
		if i == 3 || 2*metric(figs[id]) < metric(figs[ids[0]]) {
			break
		}
		hot[id] = true
	}
	return hot
}

// graphView is a flow drawn as an inline SVG (by the template: no script,
// no style attributes, which the CSP refuses).
type graphView struct {
	W, H    int
	Nodes   []graphNode
	Edges   []graphEdge
	Figures bool // the nodes carry a run's figures
}

type graphNode struct {
	ID, Label, Type    string
	X, Y               int
	Class              string // ran, failed, running, skipped (not run), hot
	Time, Tokens, Cost string
	Title              string
	Hot                bool
}

// TX is where the node's text starts; L returns the baseline of its i-th
// line.
func (n graphNode) TX() int     { return n.X + 10 }
func (n graphNode) L(i int) int { return n.Y + 22 + i*19 }
func (n graphNode) BoxW() int   { return boxW }
func (n graphNode) BoxH() int   { return boxH }

// graphTemplate draws a graphView. It is html/template, so names from the
// flow file are escaped as everywhere else.
var graphTemplate = template.Must(template.New("graph").Parse(`<div class="graph-wrap" id="graph">` +
	`<svg class="graph" viewBox="0 0 {{.W}} {{.H}}" width="{{.W}}" height="{{.H}}" role="img" aria-label="{{.Label}}" xmlns="http://www.w3.org/2000/svg">` +
	`<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0 0 L8 4 L0 8 z"></path></marker></defs>` +
	`{{range .Edges}}<path class="edge" d="{{.Path}}" marker-end="url(#arrow)"></path>{{end}}` +
	`{{range .Nodes}}<g class="node {{.Class}}" data-node="{{.ID}}"{{if .Hot}} data-hot="true"{{end}}><title>{{.Title}}</title>` +
	`<rect x="{{.X}}" y="{{.Y}}" width="{{.BoxW}}" height="{{.BoxH}}" rx="6"></rect>` +
	`<text class="name" x="{{.TX}}" y="{{.L 0}}">{{.Label}}</text>` +
	`{{if .Time}}<text class="fig" x="{{.TX}}" y="{{.L 1}}" data-fig="time">{{.Time}}</text>` +
	`{{if .Tokens}}<text class="fig" x="{{.TX}}" y="{{.L 2}}" data-fig="tokens">{{.Tokens}}</text>` +
	`<text class="fig" x="{{.TX}}" y="{{.L 3}}" data-fig="cost">{{.Cost}}{{if .Hot}} · most expensive{{end}}</text>{{end}}` +
	`{{else}}<text class="type" x="{{.TX}}" y="{{.L 1}}">{{.Type}}</text>{{end}}` +
	`</g>{{end}}</svg></div>`))

// Label is what a screen reader hears for the picture.
func (g *graphView) Label() string {
	if g.Figures {
		return "The flow's graph with each node's time, tokens and cost; the table below lists the same figures."
	}
	return "The flow's graph: " + plural(len(g.Nodes), "node", "nodes") + "."
}

// SVG renders the graph.
func (g *graphView) SVG() template.HTML {
	if g == nil {
		return ""
	}
	var b strings.Builder
	if err := graphTemplate.Execute(&b, g); err != nil {
		return template.HTML(`<p class="error">The graph could not be drawn.</p>`)
	}
	return template.HTML(b.String())
}

type graphEdge struct {
	Path string
}

// exportPositions reads the nodes' positions from a LangFlow export
// (data.nodes[].position), when it has them.
func exportPositions(data []byte) map[string][2]float64 {
	var doc struct {
		Data struct {
			Nodes []struct {
				ID       string `json:"id"`
				Position *struct {
					X float64 `json:"x"`
					Y float64 `json:"y"`
				} `json:"position"`
			} `json:"nodes"`
		} `json:"data"`
	}
	if json.Unmarshal(data, &doc) != nil {
		return nil
	}
	out := map[string][2]float64{}
	for _, n := range doc.Data.Nodes {
		if n.Position != nil {
			out[n.ID] = [2]float64{n.Position.X, n.Position.Y}
		}
	}
	return out
}

// layoutGraph lays a flow out in layers, left to right: a node's column is
// the longest path of edges that leads to it, and within a column nodes
// keep the export's top-to-bottom order (its positions), else the file's.
// figs, when set, are a run's figures per node; current is the node
// running now.
func layoutGraph(g *flow.Flow, data []byte, figs map[string]*nodeFigures, current string) *graphView {
	n := len(g.Nodes)
	if n == 0 {
		return nil
	}
	index := make(map[string]int, n)
	for i, nd := range g.Nodes {
		index[nd.ID] = i
	}
	layer := make([]int, n)
	// Longest path by relaxation; a cycle stops at n rounds.
	for round := 0; round < n; round++ {
		changed := false
		for _, e := range g.Edges {
			s, ok1 := index[e.Source]
			t, ok2 := index[e.Target]
			if ok1 && ok2 && s != t && layer[t] < layer[s]+1 && layer[s]+1 < n {
				layer[t] = layer[s] + 1
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	pos := exportPositions(data)
	cols := map[int][]int{}
	maxLayer := 0
	for i := range g.Nodes {
		cols[layer[i]] = append(cols[layer[i]], i)
		maxLayer = max(maxLayer, layer[i])
	}
	rowOf := make([]int, n)
	maxRows := 0
	for _, members := range cols {
		sort.SliceStable(members, func(a, b int) bool {
			pa, oka := pos[g.Nodes[members[a]].ID]
			pb, okb := pos[g.Nodes[members[b]].ID]
			if oka && okb && pa[1] != pb[1] {
				return pa[1] < pb[1]
			}
			if oka != okb {
				return oka
			}
			return members[a] < members[b]
		})
		for r, i := range members {
			rowOf[i] = r
		}
		maxRows = max(maxRows, len(members))
	}
	gv := &graphView{W: 2*margin + (maxLayer+1)*(boxW+colGap) - colGap, H: 2*margin + maxRows*(boxH+rowGap) - rowGap, Figures: figs != nil}
	hot := hottest(figs)
	for i, nd := range g.Nodes {
		label := nd.DisplayName
		if label == "" {
			label = nd.ID
		}
		gn := graphNode{ID: nd.ID, Label: clipRunes(label, 24), Type: clipRunes(nd.Type, 28),
			X: margin + layer[i]*(boxW+colGap), Y: margin + rowOf[i]*(boxH+rowGap)}
		gn.Title = label + " (" + nd.ID + ", " + nd.Type + ")"
		if figs != nil {
			switch f := figs[nd.ID]; {
			case nd.ID == current:
				gn.Class, gn.Time = "running", "running…"
			case f == nil:
				gn.Class = "skipped"
			default:
				gn.Class = "ran"
				if f.Status == "failed" {
					gn.Class = "failed"
				}
				gn.Time = durationWords(f.MS)
				gn.Tokens = groupDigits(f.tokens()) + " tokens"
				gn.Cost = costWords(f.CostMicros)
				gn.Title += fmt.Sprintf(": %s, %s, %s", gn.Time, gn.Tokens, gn.Cost)
				if hot[nd.ID] {
					gn.Hot = true
					gn.Class += " hot"
					gn.Title += ", among the most expensive"
				}
			}
		}
		gv.Nodes = append(gv.Nodes, gn)
	}
	for _, e := range g.Edges {
		s, ok1 := index[e.Source]
		t, ok2 := index[e.Target]
		if !ok1 || !ok2 {
			continue
		}
		a, b := gv.Nodes[s], gv.Nodes[t]
		x1, y1 := a.X+boxW, a.Y+boxH/2
		x2, y2 := b.X, b.Y+boxH/2
		gv.Edges = append(gv.Edges, graphEdge{Path: fmt.Sprintf("M%d %d C%d %d, %d %d, %d %d", x1, y1, x1+colGap/2, y1, x2-colGap/2, y2, x2-4, y2)})
	}
	return gv
}

// ---- a run's page ----

// nodeRow is a node's line in the run's table (the graph's figures, for
// reading without the picture).
type nodeRow struct {
	ID, Type, Status, Time, Model, Input, Output, Cost, Error string
	Calls                                                     int
	Hot                                                       bool
}

type runData struct {
	ID, FlowID, FlowName, Status, StatusClass string
	Running, CanCancel                        bool
	Started                                   time.Time
	Ended                                     *time.Time
	Took, Tokens, Input, Output, Cost, GPU    string
	Steps                                     int64
	Stopped                                   string
	OutputText                                string
	// Live is the progress of a run this instance executes for the console.
	Live              bool
	Done, Total       int
	Current, LiveText string
	Graph             *graphView
	Nodes             []nodeRow
	NoGraph           string
}

// runPage shows a run: its status, what stopped it in words, its totals,
// its flow's graph with each node's time, tokens and cost (the most
// expensive highlighted) and the same figures as a table. A running run's
// page refreshes itself (a Refresh header: no script needed) and offers a
// cancel button. Another user's run is not found unless the caller
// administers its tenant (the service's check).
func (c *Console) runPage(w http.ResponseWriter, r *req) {
	if !c.flowsEnabled(w, r) {
		return
	}
	rec, err := c.Runs.RunRecord(r.ctx(), r.PathValue("id"))
	if err != nil {
		c.fail(w, r.Request, r, err)
		return
	}
	u := rec.Usage
	d := runData{ID: rec.ID, FlowID: rec.FlowID, FlowName: rec.FlowID, Status: statusWords[rec.Status], StatusClass: string(rec.Status),
		Running: rec.Status == run.StatusRunning || rec.Status == run.StatusCancelling, Started: rec.StartedAt, Ended: rec.EndedAt,
		Tokens: groupDigits(u.InputTokens + u.OutputTokens), Input: groupDigits(u.InputTokens), Output: groupDigits(u.OutputTokens),
		Cost: costWords(u.CostMicros), GPU: strconv.FormatFloat(float64(u.GPUMillis)/1000, 'f', -1, 64), Steps: rec.Steps,
		Stopped: c.stopWords(r, rec), OutputText: rec.OutputPreview}
	if d.Status == "" {
		d.Status = string(rec.Status)
	}
	d.CanCancel = rec.Status == run.StatusRunning
	if rec.EndedAt != nil {
		d.Took = durationWords(float64(rec.EndedAt.Sub(rec.StartedAt).Microseconds()) / 1000)
	}
	traces, current := rec.Trace, ""
	if d.Running {
		w.Header().Set("Refresh", "2")
		if lr := c.live.get(rec.ID); lr != nil {
			v := lr.view()
			d.Live, d.Done, d.Total, d.Current, d.LiveText = true, v.Done, v.Total, v.Current, v.Text
			traces, current = v.Traces, v.Current
		}
	}
	figs, order := figuresOf(traces)
	hot := hottest(figs)
	var g *flow.Flow
	if rec.FlowID != "" {
		f, err := c.Runs.Flow(r.ctx(), rec.FlowID)
		switch {
		case err != nil:
			d.NoGraph = "The flow is not shown: it was deleted, or you no longer work in its project."
		default:
			d.FlowName = f.Name
			if g, err = flow.Parse(f.Data); err == nil {
				d.Graph = layoutGraph(g, f.Data, figs, current)
				if f.UpdatedAt.After(rec.StartedAt) {
					d.NoGraph = "The flow was changed after this run: the graph is its current version."
				}
			}
		}
	}
	for _, id := range order {
		f := figs[id]
		row := nodeRow{ID: id, Status: f.Status, Time: durationWords(f.MS), Model: f.Model, Input: groupDigits(f.Input),
			Output: groupDigits(f.Output), Cost: costWords(f.CostMicros), Calls: f.Calls, Hot: hot[id], Error: f.Error}
		for _, t := range traces {
			if t.NodeID == id {
				row.Type = t.Type
				break
			}
		}
		d.Nodes = append(d.Nodes, row)
	}
	c.render(w, r, http.StatusOK, "run", "Run "+rec.ID, "flows", d)
}

// ---- what stopped a run, in words ----

var (
	// denialText matches quota.Denial's Error text, as a run's record
	// keeps it.
	denialText = regexp.MustCompile(`(quota_exceeded|rate_limited): scope (\S+) ([a-z_]+)(?:/(day|month))?: used (\d+) of (\d+)(?: per (\S+))?, requested (\d+)(?:, retry after ([0-9hms.]+))?`)
	modelText  = regexp.MustCompile(`model_not_allowed: scope (\S+) does not allow model "([^"]*)"`)
	nodeText   = regexp.MustCompile(`^node (\S+): `)
	cancelText = regexp.MustCompile(`cancelled by user (\S+)`)
)

// parseDenial reads a denial back from its text; nil when msg holds none.
func parseDenial(msg string) *quota.Denial {
	if m := modelText.FindStringSubmatch(msg); m != nil {
		return &quota.Denial{Code: quota.CodeModelNotAllowed, Scope: m[1], Dimension: quota.DimModel, Model: m[2]}
	}
	m := denialText.FindStringSubmatch(msg)
	if m == nil {
		return nil
	}
	dim, err := quota.ParseDimension(m[3])
	if err != nil {
		return nil
	}
	win, _ := quota.ParseWindow(m[4])
	d := &quota.Denial{Code: m[1], Scope: m[2], Dimension: dim, Window: win}
	d.Used, _ = strconv.ParseInt(m[5], 10, 64)
	d.Limit, _ = strconv.ParseInt(m[6], 10, 64)
	d.Period, _ = time.ParseDuration(m[7])
	d.Requested, _ = strconv.ParseInt(m[8], 10, 64)
	d.RetryAfter, _ = time.ParseDuration(m[9])
	return d
}

// stopWords says why a run did not succeed: the limit or denial that
// stopped it, by name, or its failure; "" for a run that succeeded or
// goes on.
func (c *Console) stopWords(r *req, rec *run.Record) string {
	msg := rec.ErrorMessage
	at := ""
	if m := nodeText.FindStringSubmatch(msg); m != nil {
		at = " at node " + m[1]
	} else if n := len(rec.Trace); n > 0 && rec.Trace[n-1].Status == "failed" {
		at = " at node " + rec.Trace[n-1].NodeID // where it was when stopped
	}
	switch rec.Status {
	case run.StatusSucceeded, run.StatusRunning, run.StatusCancelling:
		return ""
	case run.StatusQuotaExceeded, run.StatusRateLimited:
		if d := parseDenial(msg); d != nil {
			return "Stopped" + at + " by a limit: " + c.denialWords(r, rec.TenantID, d)
		}
		return "Stopped" + at + " by a limit: " + msg
	case run.StatusTimeout:
		return "Stopped" + at + " by its time limit (run_timeout): it ran out of time before it ended."
	case run.StatusStepLimitExceeded:
		return "Stopped" + at + " by its step limit: " + nodeText.ReplaceAllString(msg, "") + "."
	case run.StatusMemoryLimitExceeded:
		return "Stopped" + at + " by its memory limit: " + nodeText.ReplaceAllString(msg, "") + "."
	case run.StatusCancelled:
		if m := cancelText.FindStringSubmatch(msg); m != nil {
			who := c.scopeName(r.ctx(), rec.TenantID, policy.KindUser+"/"+m[1])
			if m[1] == r.p.UserID {
				who = "you"
			}
			return "Cancelled" + at + " by " + who + "."
		}
		return "Cancelled" + at + "."
	case run.StatusInterrupted:
		return "Interrupted" + at + ": the server running it stopped before it ended (what its model calls used is counted)."
	}
	if d := parseDenial(msg); d != nil {
		return "Failed" + at + ": " + c.denialWords(r, rec.TenantID, d)
	}
	return "Failed" + at + ": " + nodeText.ReplaceAllString(msg, "")
}

// scopeWords names a scope for a sentence: "the project web".
func (c *Console) scopeWords(r *req, tenantID, scope string) string {
	if scope == policy.GlobalScope {
		return "the whole platform"
	}
	kind, _, _ := strings.Cut(scope, "/")
	name := c.scopeName(r.ctx(), tenantID, scope)
	switch kind {
	case policy.KindUser:
		if strings.TrimPrefix(scope, policy.KindUser+"/") == r.p.UserID {
			return "your own quota"
		}
		return "the user " + name
	case policy.KindMembership:
		return "your quota in the project " + name
	case policy.KindKey:
		return "the key " + name
	case "":
		return name
	}
	return "the " + kind + " " + name
}

// dimAmount writes an amount of a dimension in its unit.
func dimAmount(d quota.Dimension, v int64) string {
	switch d {
	case quota.DimTokens, quota.DimTokensRate:
		return groupDigits(v) + " tokens"
	case quota.DimRequests:
		return plural(int(v), "request", "requests")
	case quota.DimGPUSeconds:
		return strconv.FormatFloat(float64(v)/1000, 'f', -1, 64) + " GPU seconds"
	case quota.DimCost:
		return fmt.Sprintf("$%.2f", float64(v)/1e6)
	case quota.DimConcurrency:
		return plural(int(v), "run", "runs")
	}
	return groupDigits(v)
}

// denialWords says a denial in a sentence, with scope names and a rounded
// wait: "This month's token budget of the project web is used up: 95 000
// tokens of 100 000 tokens used, and the run asked for 2 000 tokens more.
// It can go on in 10h24m."
func (c *Console) denialWords(r *req, tenantID string, d *quota.Denial) string {
	where := c.scopeWords(r, tenantID, d.Scope)
	wait := ""
	if d.RetryAfter > 0 {
		wait = " Try again in " + quota.FormatWait(d.RetryAfter) + "."
	}
	switch {
	case d.Code == quota.CodeModelNotAllowed:
		return "the model " + strconv.Quote(d.Model) + " is not allowed for " + where + "."
	case d.Dimension == quota.DimConcurrency:
		return where + " allows " + dimAmount(d.Dimension, d.Limit) + " at once, and " + groupDigits(d.Used) + " were going." + wait
	case d.Code == quota.CodeRateLimited:
		per := "period"
		if d.Period > 0 {
			per = periodWord(d.Period.String())
		}
		return where + " allows " + dimAmount(d.Dimension, d.Limit) + " per " + per + ", and that rate was reached." + wait
	}
	budget := map[quota.Dimension]string{quota.DimTokens: "token budget", quota.DimGPUSeconds: "GPU-time budget", quota.DimCost: "spending budget",
		quota.DimRequests: "request budget"}[d.Dimension]
	if budget == "" {
		budget = d.Dimension.String() + " budget"
	}
	when := map[quota.Window]string{quota.WindowDay: "today's ", quota.WindowMonth: "this month's "}[d.Window]
	msg := when + budget + " of " + where + " is used up: " + dimAmount(d.Dimension, d.Used) + " of " + dimAmount(d.Dimension, d.Limit) +
		" used, and the run asked for " + dimAmount(d.Dimension, d.Requested) + " more."
	if d.RetryAfter == 0 && d.Requested > d.Limit {
		msg += " That is more than the whole limit, so waiting will not help: ask for more quota."
	}
	return msg + wait
}

// costWords writes micro-USD as dollars, with the digits a small run needs.
func costWords(micros int64) string {
	switch {
	case micros == 0:
		return "$0"
	case micros < 10_000:
		return fmt.Sprintf("$%.6f", float64(micros)/1e6)
	}
	return fmt.Sprintf("$%.4f", float64(micros)/1e6)
}

// durationWords writes milliseconds for people: "12 ms", "1.5 s", "2m05s".
func durationWords(ms float64) string {
	switch {
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
	case ms < 60_000:
		return strconv.FormatFloat(ms/1000, 'f', 1, 64) + " s"
	}
	s := int64(ms / 1000)
	return fmt.Sprintf("%dm%02ds", s/60, s%60)
}

// clipRunes shortens s to at most n characters (not bytes: names may be
// in any script).
func clipRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
