package run_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
	"github.com/sluicehq/sluice/internal/tenancy"
)

const (
	sharedFlowDir = "../../../shared/langflow"
	compactSeed   = "../flow/testdata/compact-seed.json"
)

// hfServer speaks the Hugging Face inference API's text generation task:
// POST /models/{model} {"inputs": …, "parameters": …} → [{"generated_text": …}].
type hfServer struct {
	*httptest.Server
	mu     sync.Mutex
	paths  []string
	inputs []string
}

func newHFServer(t *testing.T, answer string) *hfServer {
	t.Helper()
	s := &hfServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Inputs     string         `json:"inputs"`
			Parameters map[string]any `json:"parameters"`
		}
		if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&body) != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"Input should be a valid dictionary"}`)
			return
		}
		s.mu.Lock()
		s.paths = append(s.paths, r.URL.Path)
		s.inputs = append(s.inputs, body.Inputs)
		s.mu.Unlock()
		c, _ := json.Marshal(answer)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `[{"generated_text":%s}]`, c)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *hfServer) received() (paths, inputs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.paths), slices.Clone(s.inputs)
}

func TestExecuteCompactSeed(t *testing.T) {
	const generated = " 熵是衡量系统无序程度的物理量。"
	hf := newHFServer(t, generated)
	tests := []struct {
		name   string
		models []llm.ModelConfig
		model  string // the model the trace names
		answer func(string) bool
	}{
		{"demo: simulated stands in", nil, "google/flan-t5-large",
			func(s string) bool { return strings.Contains(s, "请解释以下术语：熵") }},
		{"hugging face wire format", []llm.ModelConfig{{Name: "google/flan-t5-large", Provider: llm.ProviderHuggingFace, BaseURL: hf.URL}},
			"google/flan-t5-large", func(s string) bool { return s == generated }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.models...)
			f := parseFlow(t, readFile(t, compactSeed))
			res, err := h.exec.Execute(context.Background(), h.job(f, "熵"))
			if err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if len(res.Outputs) != 1 || res.Outputs[0].NodeID != "chain_1" {
				t.Fatalf("outputs: got %+v, want chain_1's", res.Outputs)
			}
			if !tt.answer(res.Outputs[0].Text) {
				t.Errorf("answer: got %q", res.Outputs[0].Text)
			}
			var nodes []string
			for _, tr := range res.Trace {
				nodes = append(nodes, tr.NodeID)
				if tr.Status != "succeeded" {
					t.Errorf("trace of %s: got status %q, want succeeded", tr.NodeID, tr.Status)
				}
			}
			if !slices.Equal(nodes, []string{"prompt_1", "llm_1", "chain_1"}) {
				t.Errorf("trace: got %v, want prompt_1, llm_1, chain_1", nodes)
			}
			chain := res.Trace[2]
			if chain.Calls != 1 || !strings.Contains(chain.Model, tt.model) || chain.Usage.InputTokens <= 0 || chain.Usage.OutputTokens <= 0 {
				t.Errorf("chain trace: got %+v, want one call on %s with tokens", chain, tt.model)
			}
			if res.Usage != chain.Usage || res.Steps != 3 {
				t.Errorf("run: got usage %+v steps %d, want the chain's usage %+v and 3 steps", res.Usage, res.Steps, chain.Usage)
			}
			// What the run used is what the user's budget was charged.
			if got, want := h.userUse().TokensDay.Used, res.Usage.InputTokens+res.Usage.OutputTokens; got != want {
				t.Errorf("user tokens used: got %d, want %d", got, want)
			}
		})
	}
	paths, inputs := hf.received()
	if len(inputs) != 1 || paths[0] != "/models/google/flan-t5-large" {
		t.Fatalf("Hugging Face calls: got %v, want one POST /models/google/flan-t5-large", paths)
	}
	if !strings.Contains(inputs[0], "User: 请解释以下术语：熵") {
		t.Errorf("inputs: got %q, want the rendered prompt as the user's turn", inputs[0])
	}
}

func TestExecuteSettlesACancelledCall(t *testing.T) {
	h := newHarness(t, llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour)})
	f := parseFlow(t, readFile(t, sharedFlowDir+"/basic-prompting.json"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		res *run.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := h.exec.Execute(ctx, h.job(f, "hi"))
		done <- result{res, err}
	}()
	waitFor(t, "the model call's reservation", func() bool { return h.userUse().TokensDay.Used > 0 })
	cancel()
	r := <-done
	res, err := r.res, r.err
	var re *run.RunError
	if !errors.As(err, &re) || re.Status != run.StatusCancelled || errs.CodeOf(err) != errs.Unavailable {
		t.Fatalf("Execute: got %v, want a RunError with status cancelled, code unavailable", err)
	}
	if !strings.HasPrefix(re.NodeID, "LanguageModelComponent-") {
		t.Errorf("failed node: got %q, want the model node", re.NodeID)
	}
	// The prompt was sent: its tokens are charged, the reservation is gone.
	use := h.userUse()
	if res.Usage.InputTokens <= 0 || res.Usage.OutputTokens != 0 || use.TokensDay.Used != res.Usage.InputTokens {
		t.Errorf("usage: run %+v, user charged %d; want exactly the input tokens charged", res.Usage, use.TokensDay.Used)
	}
	if last := res.Trace[len(res.Trace)-1]; last.Status != "failed" || last.NodeID != re.NodeID || last.Calls != 1 {
		t.Errorf("last trace entry: got %+v, want the model node failed after one call", last)
	}
}

// memoryStore is a MessageStore in memory.
type memoryStore struct {
	mu   sync.Mutex
	msgs []*run.Message
}

var _ run.MessageStore = (*memoryStore)(nil)

func (m *memoryStore) AppendMessage(_ context.Context, msg *run.Message) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.msgs = append(m.msgs, msg)
	return nil
}

func (m *memoryStore) Messages(_ context.Context, tenantID, userID, sessionID string, n int) ([]*run.Message, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*run.Message
	for _, msg := range m.msgs {
		if msg.TenantID == tenantID && msg.UserID == userID && msg.SessionID == sessionID {
			out = append(out, msg)
		}
	}
	return out[max(len(out)-n, 0):], nil
}

func TestMemoryComponent(t *testing.T) {
	const memFlow = `{"nodes":[
		{"id":"mem","type":"Memory","data":%s},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"mem","sourceHandle":"messages_text","target":"out","targetHandle":"input_value"}]}`
	tests := []struct {
		name   string
		params string
		want   []string
	}{
		{"defaults: all, oldest first", `{}`, []string{"User: q1", "AI: a1", "User: q2", "AI: a2", "User: q3"}},
		{"last n", `{"n_messages":2}`, []string{"AI: a2", "User: q3"}},
		{"descending", `{"n_messages":3,"order":"Descending"}`, []string{"User: q3", "AI: a2", "User: q2"}},
		{"user's only", `{"sender":"User"}`, []string{"User: q1", "User: q2", "User: q3"}},
		{"template", `{"n_messages":1,"template":"[{sender}] {text}"}`, []string{"[User] q3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			store := &memoryStore{}
			for i, text := range []string{"q1", "a1", "q2", "a2", "q3"} {
				sender, name := "User", "User"
				if i%2 == 1 {
					sender, name = "Machine", "AI"
				}
				store.msgs = append(store.msgs, &run.Message{TenantID: h.who.TenantID, UserID: h.who.UserID, SessionID: "s1", Sender: sender, SenderName: name, Text: text, RunID: "run_old"})
			}
			// Another session and another tenant are not read.
			store.msgs = append(store.msgs,
				&run.Message{TenantID: h.who.TenantID, UserID: h.who.UserID, SessionID: "s2", Sender: "User", SenderName: "User", Text: "other session"},
				&run.Message{TenantID: h.who.TenantID, UserID: "usr_someone_else", SessionID: "s1", Sender: "User", SenderName: "User", Text: "another user"},
				&run.Message{TenantID: "ten_other", SessionID: "s1", Sender: "User", SenderName: "User", Text: "other tenant"})
			exec := *h.exec
			exec.Messages = store
			job := h.job(parseFlow(t, []byte(fmt.Sprintf(memFlow, tt.params))), "")
			job.SessionID = "s1"
			res, err := exec.Execute(context.Background(), job)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Split(res.Outputs[0].Text, "\n"); !slices.Equal(got, tt.want) {
				t.Errorf("history: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestConcurrentRunsOfOneFlow(t *testing.T) {
	h := newHarness(t)
	h.setUserLimits(`{"concurrency": 8}`)
	fl := h.upload(readFile(t, sharedFlowDir+"/basic-prompting.json"), "basic")
	const workers, runs = 8, 4
	var (
		mu     sync.Mutex
		tokens int64
		wg     sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range runs {
				out, err := h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: fmt.Sprintf("question %d from worker %d", i, w)}, nil)
				if err != nil {
					t.Errorf("worker %d run %d: %v", w, i, err)
					return
				}
				if out.Err != nil || out.Record.Status != run.StatusSucceeded || !strings.Contains(out.Result.Outputs[0].Text, fmt.Sprintf("question %d from worker %d", i, w)) {
					t.Errorf("worker %d run %d: got %v %q %q", w, i, out.Err, out.Record.Status, out.Result.Outputs[0].Text)
					return
				}
				mu.Lock()
				tokens += out.Record.Usage.InputTokens + out.Record.Usage.OutputTokens
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	use := h.userUse()
	if use.TokensDay.Used != tokens || use.Concurrency != 0 {
		t.Errorf("user counters: got %d tokens, %d runs in flight; want %d tokens, 0 in flight", use.TokensDay.Used, use.Concurrency, tokens)
	}
	recs, err := h.svc.Runs(h.member, tenancy.Filter{ParentID: fl.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != workers*runs {
		t.Errorf("run records: got %d, want %d", len(recs), workers*runs)
	}
}

// TestLongRunKeepsItsSlot: a run allowed more than DefaultRunTimeout
// (run_timeout 1h) holds its concurrency slot for as long as it runs.
func TestLongRunKeepsItsSlot(t *testing.T) {
	h := newHarness(t, llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour)})
	h.setUserLimits(`{"concurrency": 1, "run_timeout": "1h"}`)
	fl := h.upload(readFile(t, sharedFlowDir+"/basic-prompting.json"), "basic")
	ctx, cancel := context.WithCancel(h.member)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = h.svc.Run(ctx, fl.ID, run.RunRequest{InputValue: "a long question"}, nil)
	}()
	defer func() { cancel(); <-done }()
	waitFor(t, "the first run's slot", func() bool { return h.userUse().Concurrency == 1 })
	h.clock.Advance(15 * time.Minute) // the first run is still within its hour
	// The denial comes at admission, at once; the deadline only stops a
	// run admitted by mistake (generous: CI's machine is loaded).
	bctx, bcancel := context.WithTimeout(h.member, 2*time.Second)
	defer bcancel()
	_, err := h.svc.Run(bctx, fl.ID, run.RunRequest{InputValue: "a second run"}, nil)
	var d *quota.Denial
	if !errors.As(err, &d) || d.Dimension != quota.DimConcurrency {
		t.Fatalf("second run while the first holds the only slot: got %v, want a concurrency denial", err)
	}
}

func TestConcurrencySlotAdmission(t *testing.T) {
	h := newHarness(t, llm.ModelConfig{Name: "fast", Provider: llm.ProviderSimulated, Default: true},
		llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour)})
	h.setUserLimits(`{"concurrency": 1}`)
	data := readFile(t, sharedFlowDir+"/basic-prompting.json")
	lm := parseFlow(t, data).NodesOfType("LanguageModelComponent")[0].ID
	fl := h.upload(data, "basic")
	ctx, cancel := context.WithCancel(h.member)
	done := make(chan *run.Outcome, 1)
	go func() {
		out, err := h.svc.Run(ctx, fl.ID, run.RunRequest{InputValue: "slow one", Tweaks: map[string]map[string]any{lm: {"model_name": "slow"}}}, nil)
		if err != nil {
			t.Errorf("first run: %v", err)
		}
		done <- out
	}()
	// Wait until the first run is admitted and recorded as running.
	var before []*run.Record
	waitFor(t, "the first run's record", func() bool {
		var err error
		if before, err = h.svc.Runs(h.member, tenancy.Filter{}); err != nil {
			t.Fatal(err)
		}
		return len(before) == 1
	})
	// A second run is refused at the door, and nothing of it is recorded.
	_, err := h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: "second"}, nil)
	var d *quota.Denial
	if !errors.As(err, &d) || d.Dimension != quota.DimConcurrency || d.Code != quota.CodeRateLimited || d.Scope != "user/"+h.who.UserID {
		t.Fatalf("second run: got %v, want a rate_limited concurrency denial of user/%s", err, h.who.UserID)
	}
	if after, _ := h.svc.Runs(h.member, tenancy.Filter{}); len(after) != len(before) {
		t.Errorf("run records: got %d after the refusal, want %d", len(after), len(before))
	}
	cancel()
	out := <-done
	if out == nil || out.Record.Status != run.StatusCancelled {
		t.Fatalf("first run after cancel: got %+v, want status cancelled", out)
	}
	if use := h.userUse(); use.Concurrency != 0 {
		t.Errorf("runs in flight after the cancel: got %d, want 0", use.Concurrency)
	}
	out, err = h.svc.Run(h.member, fl.ID, run.RunRequest{InputValue: "third"}, nil)
	if err != nil || out.Record.Status != run.StatusSucceeded {
		t.Fatalf("third run: got %v, want success once the slot is free", err)
	}
}
