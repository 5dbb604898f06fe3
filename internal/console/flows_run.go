package console

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/httpapi"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// maxLiveRuns bounds the runs started from the console that execute at
// once on this instance; one more is refused (503) until one ends. The
// quota engine's own concurrency limits apply to each run as well.
const maxLiveRuns = 64

// maxLiveText bounds the streamed answer kept for a live run's watchers.
const maxLiveText = 1 << 20

// liveRuns are the flow runs started from the console on this instance.
// Each executes in a goroutine owned here, not by the request that started
// it, so the form can answer at once with a redirect to the run's page and
// the run goes on when the tab closes; Close stops them and waits. While a
// run goes, its progress is kept here (by run id) for its page and its
// stream; the run's record in the store is the truth once it ends.
type liveRuns struct {
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	slots chan struct{}

	mu   sync.Mutex
	byID map[string]*liveRun
}

func newLiveRuns() *liveRuns {
	ctx, stop := context.WithCancel(context.Background())
	return &liveRuns{ctx: ctx, stop: stop, slots: make(chan struct{}, maxLiveRuns), byID: map[string]*liveRun{}}
}

// Close cancels the runs started from the console that are still going
// (they end cancelled, releasing their slots and recording what they used)
// and waits for them. The app calls it after the HTTP server has drained.
func (c *Console) Close() {
	if c == nil || c.live == nil {
		return
	}
	c.live.stop()
	c.live.wg.Wait()
}

func (l *liveRuns) get(runID string) *liveRun {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byID[runID]
}

// liveRun is one run in progress, as its watchers see it.
type liveRun struct {
	flowID string
	total  int // the graph's nodes

	mu      sync.Mutex
	rec     *run.Record // set once the run is recorded
	done    map[string]bool
	traces  []run.NodeTrace
	current string
	text    string
	textGen int // counts replacements of text (not appends)
	ended   bool
	out     *run.Outcome
	err     error // the refusal (nothing ran) or the failure
	wake    chan struct{}
	// begun is closed once the run is recorded or has ended, whichever
	// comes first.
	begun     chan struct{}
	beginOnce sync.Once
}

func newLiveRun(flowID string, total int) *liveRun {
	return &liveRun{flowID: flowID, total: total, done: map[string]bool{}, wake: make(chan struct{}), begun: make(chan struct{})}
}

// changed wakes the watchers: each waits on the channel it read.
func (lr *liveRun) changed() {
	close(lr.wake)
	lr.wake = make(chan struct{})
}

func (lr *liveRun) started(rec *run.Record) {
	lr.mu.Lock()
	lr.rec = rec
	lr.changed()
	lr.mu.Unlock()
	lr.beginOnce.Do(func() { close(lr.begun) })
}

func (lr *liveRun) progress(p run.Progress) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if p.Node != "" {
		lr.current = p.Node
	}
	if p.Done != nil {
		lr.done[p.Done.NodeID] = true
		if len(lr.traces) < 4*flow.MaxNodes {
			lr.traces = append(lr.traces, *p.Done)
		}
		if lr.current == p.Done.NodeID {
			lr.current = ""
		}
	}
	lr.changed()
}

// event takes the run's stream: tokens add to the answer; a complete
// message from the machine (a chat output, or a model that does not
// stream) replaces it.
func (lr *liveRun) event(name string, data any) {
	m, _ := data.(map[string]any)
	lr.mu.Lock()
	defer lr.mu.Unlock()
	switch name {
	case "token":
		chunk, _ := m["chunk"].(string)
		if chunk == "" || len(lr.text)+len(chunk) > maxLiveText {
			return
		}
		lr.text += chunk
	case "add_message":
		sender, _ := m["sender"].(string)
		text, _ := m["text"].(string)
		if sender != "Machine" || text == "" || text == lr.text {
			return
		}
		lr.setText(text)
	default:
		return
	}
	lr.changed()
}

func (lr *liveRun) setText(text string) {
	if len(text) > maxLiveText {
		text = text[:maxLiveText]
	}
	lr.text = text
	lr.textGen++
}

func (lr *liveRun) finish(out *run.Outcome, err error) {
	lr.mu.Lock()
	lr.ended, lr.out, lr.err = true, out, err
	if out != nil {
		if lr.rec == nil {
			lr.rec = out.Record
		}
		lr.err = out.Err
		if out.Err == nil && out.Result != nil && len(out.Result.Outputs) > 0 && out.Result.Outputs[0].Text != lr.text {
			lr.setText(out.Result.Outputs[0].Text)
		}
	}
	lr.changed()
	lr.mu.Unlock()
	lr.beginOnce.Do(func() { close(lr.begun) })
}

// liveView is a copy of a live run's state.
type liveView struct {
	RunID      string
	Done       int
	Total      int
	Current    string
	Traces     []run.NodeTrace
	Text       string
	TextGen    int
	Ended      bool
	Status     run.Status
	Err        error
	wake       chan struct{}
	recordedAt bool
}

func (lr *liveRun) view() liveView {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	v := liveView{Done: min(len(lr.done), lr.total), Total: lr.total, Current: lr.current, Traces: append([]run.NodeTrace(nil), lr.traces...),
		Text: lr.text, TextGen: lr.textGen, Ended: lr.ended, Err: lr.err, wake: lr.wake, recordedAt: lr.rec != nil}
	if lr.rec != nil {
		v.RunID, v.Status = lr.rec.ID, lr.rec.Status
	}
	if lr.ended && lr.out != nil {
		v.Status = lr.out.Record.Status
		if v.Status == run.StatusSucceeded {
			v.Done = v.Total
		}
	}
	return v
}

// startRun starts a run of a flow for the signed-in user in a goroutine of
// the console's and waits until it is recorded (admitted: it may have
// waited in its scope's queue), or refused, or the browser gives up
// before it was admitted (then it is abandoned). stream asks every model
// node of the flow to stream its answer (a tweak), for the live page.
func (c *Console) startRun(r *req, idOrName, input string, stream bool) (*liveRun, error) {
	f, err := c.Runs.Flow(r.ctx(), idOrName)
	if err != nil {
		return nil, err
	}
	g, err := flow.Parse(f.Data)
	if err != nil {
		return nil, err
	}
	req := run.RunRequest{InputValue: input}
	if stream {
		req.Tweaks = streamTweaks(g)
	}
	l := c.live
	select {
	case l.slots <- struct{}{}:
	default:
		return nil, errs.E(errs.Unavailable, "%d runs started from the console are going on this server, the most it runs at once; try again when one has ended", maxLiveRuns)
	}
	ctx, cancel := context.WithCancel(tenancy.WithPrincipal(l.ctx, r.p))
	lr := newLiveRun(f.ID, len(g.Nodes))
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer func() { <-l.slots }()
		defer cancel()
		var runID string
		out, err := c.Runs.RunWatched(ctx, f.ID, req, run.Watch{OnEvent: lr.event, Progress: lr.progress, Started: func(rec *run.Record) {
			runID = rec.ID
			l.mu.Lock()
			l.byID[rec.ID] = lr
			l.mu.Unlock()
			lr.started(rec)
		}})
		lr.finish(out, err)
		if runID != "" {
			l.mu.Lock()
			delete(l.byID, runID)
			l.mu.Unlock()
		}
	}()
	select {
	case <-lr.begun:
	case <-r.Context().Done():
		if v := lr.view(); !v.recordedAt {
			cancel() // still waiting for a slot: nobody is there to see it
		}
		return nil, r.Context().Err()
	}
	if v := lr.view(); !v.recordedAt {
		return nil, v.Err
	}
	return lr, nil
}

// streamTweaks turns streaming on for every node of g that has a stream
// setting (the model components), so the answer arrives token by token.
func streamTweaks(g *flow.Flow) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, n := range g.Nodes {
		if _, ok := n.Params["stream"]; ok {
			out[n.ID] = map[string]any{"stream": true}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// runFlow runs a flow from the form (no script needed): it answers, once
// the run is admitted and recorded, with a redirect to the run's page,
// which refreshes until the run ends. A refusal (a limit reached, a bad
// input) is shown on the flow's page in words.
func (c *Console) runFlow(w http.ResponseWriter, r *req) {
	if !c.flowsEnabled(w, r) {
		return
	}
	input := r.PostForm.Get("input")
	lr, err := c.startRun(r, r.PathValue("id"), input, false)
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		status, words, ok := c.refusal(r, err)
		if !ok {
			c.fail(w, r.Request, r, err)
			return
		}
		c.showFlow(w, r, status, r.PathValue("id"), input, words)
		return
	}
	http.Redirect(w, r.Request, "/console/runs/"+lr.view().RunID, http.StatusSeeOther)
}

// refusal words why a run was refused before it ran, with its status:
// a quota denial as the run page words it, a domain error by its message.
func (c *Console) refusal(r *req, err error) (int, string, bool) {
	var d *quota.Denial
	if errors.As(err, &d) {
		words := c.denialWords(r, r.p.TenantID, d)
		if strings.Contains(err.Error(), "queue") {
			words += " (" + err.Error() + ")"
		}
		return http.StatusTooManyRequests, "The run was refused: " + words, true
	}
	var e *errs.Error
	if errors.As(err, &e) && e.Code != errs.Internal && e.Code != errs.NotFound {
		return httpapi.Status(e.Code), "The run was refused: " + e.Message, true
	}
	var ve *flow.ValidationError
	if errors.As(err, &ve) {
		return http.StatusUnprocessableEntity, "The flow cannot run: " + ve.Error(), true
	}
	return 0, "", false
}

// streamFlow runs a flow for the page's script and streams how it goes,
// one JSON object a line: started {run_id, url, total}, progress {done,
// total, node}, text {append} or {replace}, then end {status, url, stopped}
// or error {message}. The run is the console's (as runFlow's), so closing
// the page does not stop it; its page shows it.
func (c *Console) streamFlow(w http.ResponseWriter, r *req) {
	if !c.flowsEnabled(w, r) {
		return
	}
	flusher, _ := w.(http.Flusher)
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson; charset=utf-8")
	h.Set("X-Accel-Buffering", "no")
	enc := json.NewEncoder(w)
	send := func(event string, data any) {
		_ = enc.Encode(map[string]any{"event": event, "data": data})
		if flusher != nil {
			flusher.Flush()
		}
	}
	lr, err := c.startRun(r, r.PathValue("id"), r.PostForm.Get("input"), true)
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		status, words, ok := c.refusal(r, err)
		if !ok {
			var e *errs.Error
			if errors.As(err, &e) && e.Code == errs.NotFound {
				status, words = http.StatusNotFound, "Not found: "+e.Message
			} else {
				c.Log.Error("console run failed", slog.String("error", err.Error()))
				status, words = http.StatusInternalServerError, "internal error"
			}
		}
		w.WriteHeader(status)
		send("error", map[string]any{"message": words})
		return
	}
	v := lr.view()
	url := "/console/runs/" + v.RunID
	w.WriteHeader(http.StatusOK)
	send("started", map[string]any{"run_id": v.RunID, "url": url, "total": v.Total})
	sentDone, sentNode, sentGen, sentLen := -1, "", 0, 0
	for {
		v = lr.view()
		if v.Done != sentDone || v.Current != sentNode {
			send("progress", map[string]any{"done": v.Done, "total": v.Total, "node": v.Current})
			sentDone, sentNode = v.Done, v.Current
		}
		switch {
		case v.TextGen != sentGen:
			send("text", map[string]any{"replace": v.Text})
			sentGen, sentLen = v.TextGen, len(v.Text)
		case len(v.Text) > sentLen:
			send("text", map[string]any{"append": v.Text[sentLen:]})
			sentLen = len(v.Text)
		}
		if v.Ended {
			end := map[string]any{"status": string(v.Status), "status_words": statusWords[v.Status], "url": url}
			if v.Err != nil {
				if rec, err := c.Runs.RunRecord(r.ctx(), v.RunID); err == nil {
					end["stopped"] = c.stopWords(r, rec)
				}
			}
			send("end", end)
			return
		}
		select {
		case <-v.wake:
		case <-r.Context().Done():
			return // the run goes on; its page shows it
		}
	}
}

// cancelRun cancels a running run, as POST /api/v1/runs/{id}/cancel does
// (the owner or an admin of its tenant; anyone else is told it does not
// exist), and goes back to the run's page.
func (c *Console) cancelRun(w http.ResponseWriter, r *req) {
	if !c.flowsEnabled(w, r) {
		return
	}
	id := r.PathValue("id")
	_, err := c.Runs.Cancel(r.ctx(), id)
	switch {
	case errs.Is(err, errs.Conflict):
		// It had ended meanwhile: its page says how.
		redirect(w, r, "/console/runs/"+id, "")
	case err != nil:
		c.fail(w, r.Request, r, err)
	default:
		redirect(w, r, "/console/runs/"+id, "cancelling")
	}
}
