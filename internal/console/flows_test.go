package console_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// basicPrompting is LangFlow's "Basic Prompting" starter export (the
// repository's copy): ChatInput → Prompt → Language Model → ChatOutput.
func basicPrompting(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../../examples/flows/basic-prompting.json")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

const modelNode = "LanguageModelComponent-LsJMR"

// upload posts a flow file as the upload form does (multipart), with the
// given form fields.
func (b *browser) upload(fields url.Values, filename string, data []byte) page {
	b.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for k, vs := range fields {
		for _, v := range vs {
			mw.WriteField(k, v)
		}
	}
	if filename != "" {
		fw, _ := mw.CreateFormFile("flow", filename)
		fw.Write(data)
	}
	mw.Close()
	req, _ := http.NewRequest("POST", b.e.url+"/console/flows", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if b.origin != "" {
		req.Header.Set("Origin", b.origin)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(out), resp.Header}
}

var flowPath = regexp.MustCompile(`^/console/flows/(flw_[A-Za-z0-9]+)\?done=uploaded$`)

// uploadBasic uploads the basic prompting flow and returns its id.
func (b *browser) uploadBasic() string {
	b.t.Helper()
	p := b.upload(url.Values{"csrf": {b.csrf("/console/flows")}}, "basic-prompting.json", basicPrompting(b.t))
	m := flowPath.FindStringSubmatch(p.header.Get("Location"))
	if p.status != http.StatusSeeOther || m == nil {
		b.t.Fatalf("upload: %d to %q, want 303 to the flow's page:\n%s", p.status, p.header.Get("Location"), p.body)
	}
	return m[1]
}

var runPath = regexp.MustCompile(`^/console/runs/(run_[A-Za-z0-9]+)$`)

// startRun runs a flow through the form and returns the run's id.
func (b *browser) startRun(flowID, input string) string {
	b.t.Helper()
	p := b.post("/console/flows/"+flowID+"/run", url.Values{"csrf": {b.csrf("/console/flows/" + flowID)}, "input": {input}})
	m := runPath.FindStringSubmatch(p.header.Get("Location"))
	if p.status != http.StatusSeeOther || m == nil {
		b.t.Fatalf("run: %d to %q, want 303 to the run's page:\n%s", p.status, p.header.Get("Location"), visibleText(p.body))
	}
	return m[1]
}

// ended waits for the run to be recorded as ended (the console's runs go
// on after the request that started them).
func (e *env) ended(runID string) *run.Record {
	e.t.Helper()
	timeout := time.After(30 * time.Second) // a bound for a hang, not a speed check
	for {
		select {
		case r := <-e.finished:
			if r.ID == runID {
				return r
			}
		case <-timeout:
			e.t.Fatalf("run %s never ended", runID)
		}
	}
}

// otherTenant makes a second tenant with a member bob and returns bob's
// key.
func (e *env) otherTenant() string {
	e.t.Helper()
	ten, err := e.svc.CreateTenant(e.platform, tenancy.TenantInput{Name: "college", Timezone: "UTC"})
	if err != nil {
		e.t.Fatal(err)
	}
	prj, err := e.svc.CreateProject(e.platform, tenancy.ProjectInput{TenantID: ten.ID, Name: "lab"})
	if err != nil {
		e.t.Fatal(err)
	}
	bob, err := e.svc.CreateUser(e.platform, tenancy.UserInput{TenantID: ten.ID, Name: "bob", Role: tenancy.RoleTenantAdmin})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.svc.AddMember(e.platform, tenancy.MembershipInput{UserID: bob.ID, ProjectID: prj.ID}); err != nil {
		e.t.Fatal(err)
	}
	_, secret, err := e.svc.CreateKey(e.platform, tenancy.KeyInput{UserID: bob.ID, ProjectID: prj.ID})
	if err != nil {
		e.t.Fatal(err)
	}
	return secret
}

func TestUploadAFlowAndSeeItListed(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	if p := b.get("/console/flows"); p.status != http.StatusOK || !strings.Contains(p.body, "No flows yet") {
		t.Fatalf("flows before any upload: %d\n%s", p.status, p.body)
	}
	id := b.uploadBasic()

	p := b.get("/console/flows")
	row := regexp.MustCompile(`(?s)<tr data-flow="` + id + `">.*?</tr>`).FindString(p.body)
	for _, want := range []string{"Basic Prompting", "<td>web</td>", "<td>alice</td>", "2026-"} {
		if !strings.Contains(row, want) && !strings.Contains(row, strings.TrimPrefix(want, "2026-")) {
			t.Errorf("the flows list's row lacks %q: %s", want, row)
		}
	}
	p = b.get("/console/flows/" + id + "?done=uploaded")
	if p.status != http.StatusOK || !strings.Contains(p.body, "The flow was uploaded and checked") {
		t.Fatalf("the flow's page: %d\n%s", p.status, p.body)
	}
	// The graph, drawn on the server: every component, the note dropped.
	for _, node := range []string{"ChatInput-ybSRx", "Prompt-xvuxC", modelNode, "ChatOutput-hJNhd"} {
		if !strings.Contains(p.body, `data-node="`+node+`"`) {
			t.Errorf("the graph lacks node %s", node)
		}
	}
	if strings.Contains(p.body, `data-node="note-QBrHy"`) {
		t.Error("the graph draws the export's note as a node")
	}
	if n := strings.Count(p.body, `class="edge"`); n != 3 {
		t.Errorf("the graph has %d edges, want 3", n)
	}
	// The stored flow is the API's: the same service call.
	stored, err := e.runs.Flow(tenancy.WithPrincipal(context.Background(), e.aliceP()), id)
	if err != nil || stored.ProjectID != e.project || stored.Name != "Basic Prompting" {
		t.Fatalf("stored flow: %+v, %v", stored, err)
	}
}

// aliceP is alice's principal, as her key resolves.
func (e *env) aliceP() tenancy.Principal {
	p, err := e.svc.Authenticate(context.Background(), e.alice)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func TestUploadShowsEachProblemByNodeInPlace(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	tok := b.csrf("/console/flows")

	bad := []byte(`{"nodes":[{"id":"in_1","type":"ChatInput","data":{}},{"id":"mystery_1","type":"NoSuchComponent","data":{}},
		{"id":"out_1","type":"ChatOutput","data":{"input_value":"in_1"}}],"edges":[{"source":"in_1","target":"ghost_9"}]}`)
	p := b.upload(url.Values{"csrf": {tok}, "name": {"broken"}}, "broken.json", bad)
	if p.status != http.StatusUnprocessableEntity {
		t.Fatalf("a flow with problems: %d, want 422:\n%s", p.status, visibleText(p.body))
	}
	for _, node := range []string{"mystery_1", "ghost_9"} {
		if !regexp.MustCompile(`<li data-node="` + node + `"><strong>node ` + node + `</strong>`).MatchString(p.body) {
			t.Errorf("the problems list does not name node %s:\n%s", node, p.body)
		}
	}
	if !strings.Contains(p.body, `id="flow-file" name="flow" type="file" accept=".json,application/json" aria-invalid="true" aria-describedby="flow-error"`) {
		t.Errorf("the file field is not marked invalid with its message:\n%s", p.body)
	}
	if !strings.Contains(p.body, `value="broken"`) {
		t.Error("the name sent is not kept in the form")
	}
	if list, _ := e.runs.Flows(tenancy.WithPrincipal(context.Background(), e.aliceP()), tenancy.Filter{}); len(list) != 0 {
		t.Errorf("a flow with problems was stored: %d flows", len(list))
	}

	// No file; not JSON; too large: each said beside the file field.
	for _, c := range []struct {
		name   string
		file   string
		data   []byte
		status int
		says   string
	}{
		{"no file", "", nil, http.StatusBadRequest, "choose a flow file"},
		{"not JSON", "x.json", []byte("not json at all"), http.StatusUnprocessableEntity, "problem"},
		{"too large", "big.json", bytes.Repeat([]byte(" "), flow.MaxBytes+1), http.StatusRequestEntityTooLarge, "larger than"},
	} {
		p := b.upload(url.Values{"csrf": {tok}}, c.file, c.data)
		if p.status != c.status || !strings.Contains(p.body, `<span class="field-error" id="flow-error" role="alert">`) || !strings.Contains(p.body, c.says) {
			t.Errorf("%s: %d, want %d with %q beside the file field:\n%s", c.name, p.status, c.status, c.says, visibleText(p.body))
		}
	}
	// Beyond what the form may carry at all: refused before it is read whole.
	p = b.upload(url.Values{"csrf": {tok}}, "huge.json", bytes.Repeat([]byte(" "), flow.MaxBytes+128<<10))
	if p.status != http.StatusRequestEntityTooLarge {
		t.Errorf("an upload over the form's bound: %d, want 413", p.status)
	}
}

func TestFlowFormsNeedTheCSRFTokenAndThisSite(t *testing.T) {
	e := newEnv(t, llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour), Default: true})
	b := e.browser()
	b.signIn(e.alice)
	id := b.uploadBasic()
	runID := b.startRun(id, "hi")

	evil := e.browser()
	evil.c.Jar = b.c.Jar // the member's cookies, sent from another site
	evil.origin = "https://evil.example"
	for _, c := range []struct {
		name string
		do   func() page
	}{
		{"upload without the token", func() page { return b.upload(url.Values{}, "f.json", basicPrompting(t)) }},
		{"upload from another site", func() page {
			return evil.upload(url.Values{"csrf": {b.csrf("/console/flows")}}, "f.json", basicPrompting(t))
		}},
		{"run without the token", func() page { return b.post("/console/flows/"+id+"/run", url.Values{"input": {"x"}}) }},
		{"stream without the token", func() page { return b.post("/console/flows/"+id+"/stream", url.Values{"input": {"x"}}) }},
		{"run from another site", func() page {
			return evil.post("/console/flows/"+id+"/run", url.Values{"csrf": {b.csrf("/console/flows/" + id)}, "input": {"x"}})
		}},
		{"cancel without the token", func() page { return b.post("/console/runs/"+runID+"/cancel", nil) }},
		{"cancel from another site", func() page {
			return evil.post("/console/runs/"+runID+"/cancel", url.Values{"csrf": {b.csrf("/console/runs/" + runID)}})
		}},
	} {
		if p := c.do(); p.status != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", c.name, p.status)
		}
	}
	if list, _ := e.runs.Flows(tenancy.WithPrincipal(context.Background(), e.aliceP()), tenancy.Filter{}); len(list) != 1 {
		t.Errorf("after refused uploads: %d flows, want the 1 uploaded properly", len(list))
	}
	runs, _ := e.runs.Runs(tenancy.WithPrincipal(context.Background(), e.aliceP()), tenancy.Filter{})
	if len(runs) != 1 || runs[0].Status != run.StatusRunning {
		t.Errorf("after refused runs and cancels: %d runs, want the 1 started properly, still running", len(runs))
	}
}

var nodeRowRE = regexp.MustCompile(`(?s)<tr data-node="([^"]+)"( class="hot" data-hot="true")?>.*?<td data-fig="input">([^<]*)</td><td data-fig="output">([^<]*)</td><td data-fig="cost">([^<]*)</td>`)

func TestRunFromTheFormShowsEachNodesFigures(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	id := b.uploadBasic()
	runID := b.startRun(id, "Tell me about quotas")
	rec := e.ended(runID)
	if rec.Status != run.StatusSucceeded {
		t.Fatalf("the run ended %s (%s), want succeeded", rec.Status, rec.ErrorMessage)
	}

	p := b.get("/console/runs/" + runID)
	if p.status != http.StatusOK || p.header.Get("Refresh") != "" {
		t.Fatalf("the run's page: %d, Refresh %q; want 200 and no refresh once ended", p.status, p.header.Get("Refresh"))
	}
	if !strings.Contains(p.body, `<strong id="status">succeeded</strong>`) || strings.Contains(p.body, `id="cancel"`) {
		t.Errorf("an ended run's page: want succeeded and no cancel button:\n%s", visibleText(p.body))
	}
	// The table: one row per node that ran, with the record's figures.
	rows := nodeRowRE.FindAllStringSubmatch(p.body, -1)
	if len(rows) != len(rec.Trace) {
		t.Fatalf("the node table has %d rows, the run's trace %d", len(rows), len(rec.Trace))
	}
	var modelRow []string
	for i, tr := range rec.Trace {
		r := rows[i]
		if r[1] != tr.NodeID || r[3] != groupDigits(tr.Usage.InputTokens) || r[4] != groupDigits(tr.Usage.OutputTokens) {
			t.Errorf("row %d: %s %s in %s out, want %s %d in %d out", i, r[1], r[3], r[4], tr.NodeID, tr.Usage.InputTokens, tr.Usage.OutputTokens)
		}
		if tr.NodeID == modelNode {
			modelRow = r
			if tr.Usage.InputTokens == 0 || tr.Usage.OutputTokens == 0 {
				t.Errorf("the model node used %+v, want tokens both ways", tr.Usage)
			}
		}
	}
	// The model node is the one that spent: highlighted, in the table and
	// in the graph, with its tokens drawn.
	if modelRow == nil || modelRow[2] == "" {
		t.Fatalf("the model node's row is missing or not highlighted: %v", modelRow)
	}
	if n := strings.Count(p.body, `data-hot="true"`); n != 2 {
		t.Errorf("%d highlighted elements, want the model node's row and box", n)
	}
	box := regexp.MustCompile(`(?s)<g class="node ran hot" data-node="` + modelNode + `" data-hot="true">.*?</g>`).FindString(p.body)
	tokens := rec.Usage.InputTokens + rec.Usage.OutputTokens
	if !strings.Contains(box, `data-fig="tokens">`+groupDigits(tokens)+" tokens<") || !strings.Contains(box, `data-fig="time">`) {
		t.Errorf("the model node's box lacks its %d tokens or its time: %s", tokens, box)
	}
	if !strings.Contains(p.body, `<dd id="run-tokens">`+groupDigits(tokens)+" ") {
		t.Errorf("the run's total is not %d tokens", tokens)
	}
	if rec.OutputPreview == "" || !strings.Contains(p.body, `<div class="answer" id="answer-final">`) {
		t.Errorf("the answer is not shown (preview %q)", rec.OutputPreview)
	}

	// The runs list and the flow's page link to it.
	for _, path := range []string{"/console/runs", "/console/flows/" + id} {
		if p := b.get(path); !strings.Contains(p.body, `<tr data-run="`+runID+`" data-status="succeeded">`) {
			t.Errorf("%s does not list the run:\n%s", path, visibleText(p.body))
		}
	}
}

// event is one line of the console's run stream.
type event struct {
	Event string         `json:"event"`
	Data  map[string]any `json:"data"`
}

// stream runs a flow as the page's script does and returns its events as
// they come (the channel closes with the stream).
func (b *browser) stream(flowID, input string) <-chan event {
	b.t.Helper()
	tok := b.csrf("/console/flows/" + flowID)
	req, _ := http.NewRequest("POST", b.e.url+"/console/flows/"+flowID+"/stream", strings.NewReader(url.Values{"csrf": {tok}, "input": {input}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.e.url)
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson") {
		resp.Body.Close()
		b.t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan event, 1024)
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev = event{Event: "not JSON: " + sc.Text()}
			}
			out <- ev
		}
	}()
	return out
}

// next is the stream's next event ("" once it has ended).
func next(t *testing.T, events <-chan event) event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(30 * time.Second): // a bound for a hang
		t.Fatal("the stream sent nothing")
		return event{}
	}
}

func TestStreamedRunSendsProgressAndTheAnswer(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	id := b.uploadBasic()
	var events []event
	for ev := range b.stream(id, "Tell me about quotas") {
		if strings.HasPrefix(ev.Event, "not JSON") {
			t.Fatal(ev.Event)
		}
		events = append(events, ev)
	}
	if len(events) < 3 || events[0].Event != "started" || events[len(events)-1].Event != "end" {
		t.Fatalf("events %v, want started … end", events)
	}
	runID, _ := events[0].Data["run_id"].(string)
	total := int(events[0].Data["total"].(float64))
	var answer string
	tokens, lastDone := 0, -1
	for _, ev := range events[1 : len(events)-1] {
		switch ev.Event {
		case "progress":
			done := int(ev.Data["done"].(float64))
			if done < lastDone || done > total {
				t.Errorf("progress went from %d to %d of %d", lastDone, done, total)
			}
			lastDone = done
		case "text":
			if s, ok := ev.Data["append"].(string); ok {
				answer += s
				tokens++
			}
			if s, ok := ev.Data["replace"].(string); ok {
				answer = s
			}
		}
	}
	end := events[len(events)-1].Data
	if end["status"] != "succeeded" || end["url"] != "/console/runs/"+runID {
		t.Errorf("end: %v", end)
	}
	if lastDone != total || total != 4 {
		t.Errorf("progress ended at %d of %d, want 4 of 4 (the flow's components)", lastDone, total)
	}
	// The answer came as tokens (the model streamed: without, only the
	// chat output's whole message replaces it) and is the run's.
	if tokens == 0 {
		t.Error("no token of the answer was streamed")
	}
	rec := e.ended(runID)
	if answer == "" || !strings.HasPrefix(answer, strings.TrimSuffix(rec.OutputPreview, "…")) {
		t.Errorf("streamed answer %q, the run's output %q", answer, rec.OutputPreview)
	}
}

func TestCancelARunFromItsPage(t *testing.T) {
	e := newEnv(t, llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour), Default: true})
	b := e.browser()
	b.signIn(e.alice)
	id := b.uploadBasic()
	// Started through the stream, which says when the (hour-long) model
	// node has begun.
	events := b.stream(id, "hi")
	started := next(t, events)
	runID, _ := started.Data["run_id"].(string)
	for {
		ev := next(t, events)
		if ev.Event == "" || ev.Event == "end" {
			t.Fatalf("the stream ended before the model node ran: %v", ev)
		}
		if ev.Event == "progress" && ev.Data["node"] == modelNode {
			break
		}
	}

	p := b.get("/console/runs/" + runID)
	if p.status != http.StatusOK || p.header.Get("Refresh") != "2" {
		t.Fatalf("a running run's page: %d, Refresh %q, want 200 and a refresh", p.status, p.header.Get("Refresh"))
	}
	if !strings.Contains(p.body, `<strong id="status">running</strong>`) || !strings.Contains(p.body, `<form method="post" action="/console/runs/`+runID+`/cancel" id="cancel">`) {
		t.Fatalf("a running run's page lacks its status or the cancel button:\n%s", p.body)
	}
	// The model node is running; the two before it are done.
	if !strings.Contains(p.body, `<g class="node running" data-node="`+modelNode+`">`) || !strings.Contains(p.body, "2 of 4 nodes done; running "+modelNode) {
		t.Errorf("a running run's page does not show its progress:\n%s", visibleText(p.body))
	}

	// Another tenant's admin: not found, and cannot cancel.
	rival := e.browser()
	rival.signIn(e.otherTenant())
	if p := rival.get("/console/runs/" + runID); p.status != http.StatusNotFound {
		t.Errorf("another tenant's admin opens the run: %d, want 404", p.status)
	}
	if p := rival.post("/console/runs/"+runID+"/cancel", url.Values{"csrf": {rival.csrf("/console/runs")}}); p.status != http.StatusNotFound {
		t.Errorf("another tenant's admin cancels the run: %d, want 404", p.status)
	}

	if used := e.concurrencyUsed(); used != 1 {
		t.Errorf("while the run goes %d runs hold a slot, want 1", used)
	}
	p = b.post("/console/runs/"+runID+"/cancel", url.Values{"csrf": {b.csrf("/console/runs/" + runID)}})
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/console/runs/"+runID+"?done=cancelling" {
		t.Fatalf("cancel: %d to %q", p.status, p.header.Get("Location"))
	}
	var end event
	for ev := next(t, events); ev.Event != ""; ev = next(t, events) {
		end = ev
	}
	if end.Event != "end" || end.Data["status"] != "cancelled" || end.Data["stopped"] != "Cancelled at node "+modelNode+" by you." {
		t.Errorf("the stream's last event: %v, want the run cancelled by you", end)
	}
	rec := e.ended(runID)
	if rec.Status != run.StatusCancelled {
		t.Fatalf("after cancel the run is %s, want cancelled", rec.Status)
	}
	p = b.get("/console/runs/" + runID)
	if !strings.Contains(p.body, `<p class="stopped" id="stopped" role="alert">Cancelled at node `+modelNode+` by you.</p>`) || strings.Contains(p.body, `id="cancel"`) {
		t.Errorf("the cancelled run's page:\n%s", visibleText(p.body))
	}
	// The slot is back: nothing holds the project's concurrency.
	if used := e.concurrencyUsed(); used != 0 {
		t.Errorf("after the cancel %d runs hold a slot, want 0", used)
	}
	// Cancelling again: back to the page, which says how it ended.
	if p := b.post("/console/runs/"+runID+"/cancel", url.Values{"csrf": {b.csrf("/console/runs/" + runID)}}); p.status != http.StatusSeeOther {
		t.Errorf("cancelling an ended run: %d, want 303 back to its page", p.status)
	}
}

// concurrencyUsed is the runs in flight in alice's project.
func (e *env) concurrencyUsed() int64 {
	e.t.Helper()
	u, err := e.meter.Use(context.Background(), "project/"+e.project)
	if err != nil {
		e.t.Fatal(err)
	}
	return u.Concurrency
}

func TestAnotherTenantsFlowsAndRunsAreNotFound(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	id := b.uploadBasic()
	runID := b.startRun(id, "hi")
	e.ended(runID)

	rival := e.browser()
	rival.signIn(e.otherTenant())
	tok := rival.csrf("/console/flows")
	if p := rival.get("/console/flows"); strings.Contains(p.body, id) || strings.Contains(p.body, "Basic Prompting") {
		t.Errorf("another tenant's flows list shows alice's flow")
	}
	for _, c := range []struct {
		name string
		do   func() page
	}{
		{"open the flow", func() page { return rival.get("/console/flows/" + id) }},
		{"open the flow by endpoint", func() page { return rival.get("/console/flows/basic-prompting") }},
		{"run the flow", func() page { return rival.post("/console/flows/"+id+"/run", url.Values{"csrf": {tok}, "input": {"x"}}) }},
		{"stream the flow", func() page {
			return rival.post("/console/flows/"+id+"/stream", url.Values{"csrf": {tok}, "input": {"x"}})
		}},
		{"open the run", func() page { return rival.get("/console/runs/" + runID) }},
	} {
		p := c.do()
		if p.status != http.StatusNotFound {
			t.Errorf("another tenant's admin: %s: %d, want 404", c.name, p.status)
		}
		if strings.HasPrefix(p.header.Get("Content-Type"), "text/html") && !strings.Contains(p.body, "<h1>Not found</h1>") {
			t.Errorf("%s: the page does not say Not found:\n%s", c.name, visibleText(p.body))
		}
	}
	if p := rival.get("/console/runs"); strings.Contains(p.body, runID) {
		t.Error("another tenant's runs list shows alice's run")
	}
}

func TestARunStoppedByALimitSaysWhichInWords(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.signIn(e.alice)
	id := b.uploadBasic()
	// Ten tokens a month for the project: the model call cannot fit.
	if _, err := e.policy.SetLimits(e.platform, "project/"+e.project, policy.LimitsInput{Limits: policy.Spec{
		Tokens: policy.Budgets{{Amount: 10, Window: quota.WindowMonth}}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.policy.Manager().Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := b.post("/console/flows/"+id+"/run", url.Values{"csrf": {b.csrf("/console/flows/" + id)}, "input": {"Tell me about quotas"}})
	var words string
	if m := runPath.FindStringSubmatch(p.header.Get("Location")); m != nil {
		// Admitted, then stopped at the model node.
		rec := e.ended(m[1])
		if rec.Status != run.StatusQuotaExceeded {
			t.Fatalf("the run ended %s (%s), want quota_exceeded", rec.Status, rec.ErrorMessage)
		}
		page := b.get("/console/runs/" + m[1])
		words = regexp.MustCompile(`<p class="stopped" id="stopped" role="alert">([^<]*)</p>`).FindStringSubmatch(page.body)[1]
	} else {
		// Refused at admission: said on the flow's page.
		if p.status != http.StatusTooManyRequests {
			t.Fatalf("run over the limit: %d %s", p.status, visibleText(p.body))
		}
		words = regexp.MustCompile(`<p class="error" role="alert" id="run-error">([^<]*)</p>`).FindStringSubmatch(p.body)[1]
	}
	words = strings.ReplaceAll(words, "&#39;", "'")
	for _, want := range []string{"this month's token budget of the project web is used up", "of 10 tokens used", "asked for"} {
		if !strings.Contains(words, want) {
			t.Errorf("the stop is said as %q, want it to contain %q", words, want)
		}
	}
	if strings.Contains(words, "prj_") || strings.Contains(words, "quota_exceeded") {
		t.Errorf("the stop shows ids or codes: %q", words)
	}
}

// groupDigits is the console's number format (thin spaces between
// thousands).
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteRune(ch)
	}
	return b.String()
}
