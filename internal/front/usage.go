package front

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// maxWatched bounds what the tracker keeps of one answer or one stream
// event to read usage from; the caller gets everything regardless.
const maxWatched = 8 << 20

// usageTracker reads, from an answer as it passes through, the usage
// LangFlow reports on its messages (properties.usage: input_tokens,
// output_tokens) and a build's job id. A streamed answer is read event by
// event (LangFlow's JSON events separated by blank lines).
type usageTracker struct {
	mu    sync.Mutex
	buf   []byte
	over  bool
	seen  map[string]quota.Usage
	jobID string
}

func (t *usageTracker) wrap(body io.ReadCloser) io.ReadCloser {
	return &watched{ReadCloser: body, t: t}
}

type watched struct {
	io.ReadCloser
	t    *usageTracker
	done bool
}

func (w *watched) Read(p []byte) (int, error) {
	n, err := w.ReadCloser.Read(p)
	w.t.feed(p[:n])
	if err != nil && !w.done {
		w.done = true
		w.t.finish()
	}
	return n, err
}

func (w *watched) Close() error {
	if !w.done {
		w.done = true
		w.t.finish()
	}
	return w.ReadCloser.Close()
}

// feed takes the next bytes: every complete event (up to a blank line) is
// read at once, so usage is known even if the stream is cut later.
func (t *usageTracker) feed(b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.over {
		return
	}
	t.buf = append(t.buf, b...)
	for {
		i := bytes.Index(t.buf, []byte("\n\n"))
		if i < 0 {
			break
		}
		t.read(t.buf[:i])
		t.buf = t.buf[i+2:]
	}
	if len(t.buf) > maxWatched {
		t.over, t.buf = true, nil
	}
}

// finish reads what is left: a whole JSON answer, or a last event.
func (t *usageTracker) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(bytes.TrimSpace(t.buf)) > 0 {
		t.read(t.buf)
	}
	t.buf = nil
}

func (t *usageTracker) read(b []byte) {
	var v any
	if json.Unmarshal(bytes.TrimSpace(b), &v) != nil {
		return
	}
	if m, ok := v.(map[string]any); ok {
		if id, ok := m["job_id"].(string); ok && t.jobID == "" {
			t.jobID = id
		}
	}
	if t.seen == nil {
		t.seen = map[string]quota.Usage{}
	}
	collect(v, t.seen)
}

// usage is the total reported, each message counted once.
func (t *usageTracker) usage() quota.Usage {
	t.mu.Lock()
	defer t.mu.Unlock()
	var u quota.Usage
	for _, m := range t.seen {
		u.InputTokens += m.InputTokens
		u.OutputTokens += m.OutputTokens
	}
	return u
}

// collect finds every message's properties.usage in v. A message seen
// twice (a run's answer lists it under results, outputs and messages, a
// stream in add_message and end) counts once: by its id, or else by its
// text and usage.
func collect(v any, seen map[string]quota.Usage) {
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			collect(e, seen)
		}
	case map[string]any:
		if props, ok := x["properties"].(map[string]any); ok {
			if u, ok := props["usage"].(map[string]any); ok {
				in, out := num(u, "input_tokens", "prompt_tokens"), num(u, "output_tokens", "completion_tokens")
				if in > 0 || out > 0 {
					key, _ := x["id"].(string)
					if key == "" {
						text, _ := x["text"].(string)
						key = fmt.Sprintf("%d/%d/%s", in, out, text)
					}
					seen[key] = quota.Usage{InputTokens: in, OutputTokens: out}
				}
			}
		}
		for k, e := range x {
			if k != "properties" {
				collect(e, seen)
			}
		}
	}
}

func num(m map[string]any, keys ...string) int64 {
	for _, k := range keys {
		if f, ok := m[k].(float64); ok && f > 0 {
			return int64(f)
		}
	}
	return 0
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

// jobs holds the slots of builds whose jobs run on in LangFlow, until
// their events end or their run timeout passes.
type jobs struct {
	mu sync.Mutex
	m  map[string]*heldJob
}

type heldJob struct {
	slot    *Slot
	release func(quota.Usage)
	timer   *time.Timer
	taken   bool
}

// hold keeps slot for job until take, or the slot's timeout, when the
// job is cancelled at LangFlow and the slot released.
func (j *jobs) hold(job string, slot *Slot, release func(quota.Usage), cancel func(job string)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.m == nil {
		j.m = map[string]*heldJob{}
	}
	hj := &heldJob{slot: slot, release: release}
	hj.timer = time.AfterFunc(slot.Timeout, func() {
		j.mu.Lock()
		cur, ok := j.m[job]
		if ok && cur == hj {
			delete(j.m, job)
		}
		j.mu.Unlock()
		if ok && cur == hj {
			cancel(job)
			release(quota.Usage{})
		}
	})
	j.m[job] = hj
}

// take returns a held job's slot and its release, once.
func (j *jobs) take(job string) (*Slot, func(quota.Usage)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	hj, ok := j.m[job]
	if !ok {
		return nil, nil
	}
	delete(j.m, job)
	hj.timer.Stop()
	return hj.slot, hj.release
}
