package front_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/front"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/tenancy"
	"github.com/sluicehq/sluice/internal/usage"
)

// authFunc is an Authenticator.
type authFunc func(ctx context.Context, secret string) (tenancy.Principal, error)

func (f authFunc) Authenticate(ctx context.Context, secret string) (tenancy.Principal, error) {
	return f(ctx, secret)
}

// meter admits every run and records what each release settled.
type meter struct {
	mu      sync.Mutex
	settled []quota.Usage
}

var _ gate.Meter = (*meter)(nil)

func (m *meter) Acquire(context.Context, metering.Who, string, quota.Ask, time.Duration) (*metering.Admission, error) {
	return &metering.Admission{Ticket: quota.Ticket{ID: "tkt_1"}}, nil
}

func (m *meter) SettleWith(_ context.Context, id string, u quota.Usage, _ string, _ func(*usage.Event)) (quota.Settlement, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settled = append(m.settled, u)
	return quota.Settlement{TicketID: id, Usage: u}, nil
}

func (m *meter) settles() []quota.Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]quota.Usage(nil), m.settled...)
}

// lateBody is a caller's request body whose reads after its end wait
// until the answer has reached the caller: the order a busy machine (or
// the race detector) produces now and then between the transport that
// forwards the body and the server that answers.
type lateBody struct {
	io.ReadCloser
	answered <-chan struct{}
	done     <-chan struct{}
	ended    bool
}

func (b *lateBody) Read(p []byte) (int, error) {
	if b.ended {
		select {
		case <-b.answered:
		case <-b.done:
		}
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.ended = true
	}
	return n, err
}

// TestStreamOutlivesItsRequestBody: a streamed run whose first event
// reaches the caller before the transport has finished with the caller's
// request body is relayed to its end, its slot held until then. The Go
// HTTP/1 server closes a request's body when the answer starts; the
// transport, having sent the body's Content-Length, reads it once more to
// check it was not longer, and a failure there made it close its
// connection to LangFlow, cutting the stream (use of closed network
// connection) and freeing the slot while LangFlow still ran the flow.
func TestStreamOutlivesItsRequestBody(t *testing.T) {
	finish := make(chan struct{})
	cancelled := make(chan struct{}, 1)
	lf := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, `{"event": "add_message", "data": {"id":"m0","text":"hi","sender":"User"}}`+"\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-finish:
		case <-r.Context().Done():
			cancelled <- struct{}{}
			return
		}
		fmt.Fprint(w, `{"event": "token", "data": {"chunk":"Hel","id":"m1"}}`+"\n\n")
		fmt.Fprint(w, `{"event": "end", "data": {"result": {"outputs":[{"outputs":[{"results":{"message":{"id":"m1","text":"Hello!","properties":{"usage":{"input_tokens":30,"output_tokens":12}}}}}]}]}}}`+"\n\n")
	}))
	defer lf.Close()
	release := sync.OnceFunc(func() { close(finish) })
	defer release()
	up, _ := url.Parse(lf.URL)
	m := &meter{}
	var logs lockedBuffer
	h := &front.Handler{
		Upstream: up, Key: llm.NewSecret("lf-upstream-key"), Gate: &gate.Gate{Meter: m},
		Auth: authFunc(func(context.Context, string) (tenancy.Principal, error) {
			return tenancy.Principal{KeyID: "k1", UserID: "u1", TenantID: "t1"}, nil
		}),
		Log: slog.New(slog.NewJSONHandler(&logs, nil)), ChargeReportedUsage: true,
	}

	answered := make(chan struct{})
	wrote := make(chan error, 1)
	trace := &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) { wrote <- i.Err }}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r2 := r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
		r2.Body = &lateBody{ReadCloser: r.Body, answered: answered, done: t.Context().Done()}
		h.ServeHTTP(w, r2)
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/api/v1/run/f1?stream=true", strings.NewReader(`{"input_value":"hi"}`))
	req.Header.Set("X-Api-Key", "slk_caller")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	if first, err := rd.ReadString('\n'); err != nil || !strings.Contains(first, `"add_message"`) {
		t.Fatalf("first event %q (%v), want add_message while LangFlow still runs", first, err)
	}
	close(answered)
	select {
	case err := <-wrote:
		if err != nil {
			t.Errorf("forwarding the request to LangFlow failed once its answer had started: %v (the transport then closes the connection the stream comes on)", err)
		}
	case <-ctx.Done():
		t.Fatal("the request to LangFlow was never written")
	}
	if s := m.settles(); len(s) != 0 {
		t.Errorf("the slot was released (%v) while the stream was open", s)
	}
	release()
	rest, err := io.ReadAll(rd)
	if err != nil || !strings.Contains(string(rest), `"event": "end"`) {
		t.Errorf("the rest of the stream: %q (%v), want it to the end event", rest, err)
	}
	select {
	case <-cancelled:
		t.Error("LangFlow's request was cancelled while the caller was still reading")
	default:
	}
	if s := m.settles(); len(s) != 1 || s[0] != (quota.Usage{InputTokens: 30, OutputTokens: 12}) {
		t.Errorf("settled %v, want once with the 30+12 tokens LangFlow reported", s)
	}
	if l := logs.String(); strings.Contains(l, `"level":"WARN"`) {
		t.Errorf("a run relayed whole logged a warning: %s", l)
	}
}

// lockedBuffer is a log's writer that the test reads while the handler
// may still write.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
