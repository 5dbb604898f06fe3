package run_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/run"
)

// runFlow runs a flow's JSON for the harness's member and returns the text
// of its first output.
func runFlow(t *testing.T, h *harness, data string, input string, tweaks map[string]map[string]any) (string, error) {
	t.Helper()
	job := h.job(parseFlow(t, []byte(data)), input)
	job.Tweaks = tweaks
	res, err := h.exec.Execute(context.Background(), job)
	if err != nil {
		return "", err
	}
	if len(res.Outputs) == 0 {
		t.Fatalf("run: no outputs")
	}
	return res.Outputs[0].Text, nil
}

func TestParserInAFlow(t *testing.T) {
	const parserFlow = `{"nodes":[
		{"id":"p","type":"%s","data":%s},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"p","sourceHandle":"parsed_text","target":"out","targetHandle":"input_value"}]}`
	// input_data as LangFlow's API takes a Data; a tweak may replace it.
	const doc = `"input_data":{"data":{"text":"Sluice governs flows","source":"readme.md","page":2}}`
	tests := []struct {
		name   string
		typ    string
		params string
		want   string
	}{
		{"template", "ParserComponent", `{"pattern":"{source} p.{page}: {text}",` + doc + `}`, "readme.md p.2: Sluice governs flows"},
		{"older exports' type name and default template", "parser", `{` + doc + `}`, "Text: Sluice governs flows"},
		{"oldest exports' format field", "parser", `{"format":"[{source}]",` + doc + `}`, "[readme.md]"},
		{"stringify", "ParserComponent", `{"mode":"Stringify","pattern":"ignored {text}",` + doc + `}`,
			// A JSON object in a flow file loses its order in Go: its fields come sorted.
			"```json\n{\n  \"page\": 2,\n  \"source\": \"readme.md\",\n  \"text\": \"Sluice governs flows\"\n}\n```"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			got, err := runFlow(t, h, fmt.Sprintf(parserFlow, tt.typ, tt.params), "", nil)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got != tt.want {
				t.Errorf("output: got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("a tweak replaces the data", func(t *testing.T) {
		h := newHarness(t)
		tweak := map[string]any{"input_data": map[string]any{"text": "from the tweak", "data": map[string]any{"source": "api"}}}
		got, err := runFlow(t, h, fmt.Sprintf(parserFlow, "ParserComponent", `{"pattern":"{source}: {text}",`+doc+`}`), "", map[string]map[string]any{"p": tweak})
		if err != nil || got != "api: from the tweak" {
			t.Fatalf("run: got %q, %v; want %q", got, err, "api: from the tweak")
		}
	})
	t.Run("no input data", func(t *testing.T) {
		h := newHarness(t)
		_, err := runFlow(t, h, fmt.Sprintf(parserFlow, "ParserComponent", `{"input_data":"not data"}`), "", nil)
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.p.input_data" {
			t.Fatalf("run: got %v, want unprocessable at nodes.p.input_data", err)
		}
		var re *run.RunError
		if !errors.As(err, &re) || re.NodeID != "p" {
			t.Errorf("run error: got %v, want one naming node p", err)
		}
	})
}

func TestCurrentDateInAFlow(t *testing.T) {
	// The date feeds a prompt, as in LangFlow's agent starter flows.
	const dateFlow = `{"nodes":[
		{"id":"date","type":"CurrentDateComponent","data":{"timezone":"Asia/Tokyo"}},
		{"id":"p","type":"Prompt","data":{"template":"Today: {today}"}},
		{"id":"out","type":"TextOutput"}
	],"edges":[{"source":"date","target":"p","targetHandle":"today"},{"source":"p","target":"out"}]}`
	h := newHarness(t)
	exec := *h.exec
	exec.Now = func() time.Time { return time.Date(2025, 12, 31, 20, 0, 0, 0, time.UTC) }
	job := h.job(parseFlow(t, []byte(dateFlow)), "")
	res, err := exec.Execute(context.Background(), job)
	if err != nil {
		t.Fatal(err)
	}
	if want := "Today: Current date and time in Asia/Tokyo: 2026-01-01 05:00:00 JST"; res.Outputs[0].Text != want {
		t.Errorf("output: got %q, want %q", res.Outputs[0].Text, want)
	}
	// A tweak picks the zone per run.
	job.Tweaks = map[string]map[string]any{"date": {"timezone": "America/Sao_Paulo"}}
	if res, err = exec.Execute(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	if want := "Today: Current date and time in America/Sao_Paulo: 2025-12-31 17:00:00 -03"; res.Outputs[0].Text != want {
		t.Errorf("output with the tweak: got %q, want %q", res.Outputs[0].Text, want)
	}
}

func TestSplitTextInAFlow(t *testing.T) {
	// The run's text is split, and a Parser numbers the chunks, as the
	// ingestion half of LangFlow's RAG starter flows does before a store.
	const splitFlow = `{"nodes":[
		{"id":"in","type":"TextInput"},
		{"id":"split","type":"SplitTextComponent","data":%s},
		{"id":"p","type":"parser","data":{"pattern":"[{text}]","sep":" | "}},
		{"id":"out","type":"TextOutput"}
	],"edges":[{"source":"in","target":"split"},{"source":"split","sourceHandle":"%s","target":"p"},{"source":"p","target":"out"}]}`
	const text = "Quotas are per scope.\nEvery call is metered.\nUsage is billed daily."
	tests := []struct {
		name   string
		params string
		output string
		want   string
	}{
		{"lines merged into chunks with overlap", `{"chunk_size":45,"chunk_overlap":25,"separator":"\\n"}`, "dataframe",
			"[Quotas are per scope.\nEvery call is metered.] | [Every call is metered.\nUsage is billed daily.]"},
		{"LangFlow's /n spelling, no overlap, as a list of Data", `{"chunk_size":30,"chunk_overlap":0,"separator":"/n"}`, "chunks",
			"[Quotas are per scope.] | [Every call is metered.] | [Usage is billed daily.]"},
		{"separator kept", `{"chunk_size":30,"chunk_overlap":0,"separator":".","keep_separator":"Start"}`, "dataframe",
			"[Quotas are per scope] | [.\nEvery call is metered] | [.\nUsage is billed daily.]"},
		{"recursive mode", `{"mode":"Recursive","chunk_size":25,"chunk_overlap":0}`, "dataframe",
			"[Quotas are per scope.] | [Every call is metered.] | [Usage is billed daily.]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			job := h.job(parseFlow(t, []byte(fmt.Sprintf(splitFlow, tt.params, tt.output))), text)
			job.InputType = "text"
			res, err := h.exec.Execute(context.Background(), job)
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Outputs[0].Text; got != tt.want {
				t.Errorf("output: got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("chunks carry the message's fields unless clean_output", func(t *testing.T) {
		const metaFlow = `{"nodes":[
			{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
			{"id":"split","type":"SplitText","data":{"chunk_size":100,"chunk_overlap":0,"clean_output":%t}},
			{"id":"p","type":"ParserComponent","data":{"mode":"Stringify"}},
			{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
		],"edges":[{"source":"in","target":"split"},{"source":"split","sourceHandle":"dataframe","target":"p"},{"source":"p","target":"out"}]}`
		h := newHarness(t)
		for _, clean := range []bool{false, true} {
			got, err := runFlow(t, h, fmt.Sprintf(metaFlow, clean), "hello", nil)
			if err != nil {
				t.Fatal(err)
			}
			header := strings.SplitN(got, "\n", 2)[0]
			if hasSender := strings.Contains(header, "sender_name"); hasSender == clean || !strings.HasPrefix(header, "| text ") {
				t.Errorf("clean_output %t: got table header %q", clean, header)
			}
		}
	})
	t.Run("overlap larger than the chunk", func(t *testing.T) {
		h := newHarness(t)
		_, err := runFlow(t, h, fmt.Sprintf(splitFlow, `{"chunk_size":10,"chunk_overlap":20}`, "dataframe"), "x", nil)
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.split.chunk_overlap" {
			t.Fatalf("run: got %v, want unprocessable at nodes.split.chunk_overlap", err)
		}
	})
}

// TestTextInputAndOutput: LangFlow gives the run's input_value to the
// input components its input_type names ("chat" by default, so a TextInput
// then keeps its own text), and TextOutput says its own text when nothing
// is connected to it.
func TestTextInputAndOutput(t *testing.T) {
	const textFlow = `{"nodes":[
		{"id":"ti","type":"TextInput","data":{"input_value":"stored"}},
		{"id":"to","type":"TextOutput"},
		{"id":"fixed","type":"TextOutput","data":{"input_value":"always this"}}
	],"edges":[{"source":"ti","target":"to"}]}`
	tests := []struct {
		name      string
		inputType string
		tweaks    map[string]map[string]any
		want      []string // to, fixed
	}{
		{"chat input type: the TextInput keeps its text", "", nil, []string{"stored", "always this"}},
		{"text input type", "text", nil, []string{"from the run", "always this"}},
		{"any input type", "any", nil, []string{"from the run", "always this"}},
		{"tweaks", "chat", map[string]map[string]any{"ti": {"input_value": "tweaked"}, "fixed": {"input_value": "tweaked too"}},
			[]string{"tweaked", "tweaked too"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			job := h.job(parseFlow(t, []byte(textFlow)), "from the run")
			job.InputType, job.Tweaks = tt.inputType, tt.tweaks
			res, err := h.exec.Execute(context.Background(), job)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range res.Outputs {
				got = append(got, o.Text)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("outputs: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTweaksNamingNoNode(t *testing.T) {
	data := readFile(t, sharedFlowDir+"/basic-prompting.json")
	f := parseFlow(t, data)
	prompt := f.NodesOfType("Prompt")[0]
	tests := []struct {
		name      string
		tweaks    map[string]map[string]any
		wantField string // "" when the run succeeds
	}{
		{"by id", map[string]map[string]any{prompt.ID: {"template": "Say hi"}}, ""},
		{"by display name", map[string]map[string]any{prompt.DisplayName: {"template": "Say hi"}}, ""},
		{"unknown id", map[string]map[string]any{"Prompt-nope": {"template": "x"}}, "tweaks.Prompt-nope"},
		{"one known, two unknown", map[string]map[string]any{prompt.ID: {}, "zz": {}, "aa": {}}, "tweaks.aa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			job := h.job(f, "hello")
			job.Tweaks = tt.tweaks
			res, err := h.exec.Execute(context.Background(), job)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("run: %v", err)
				}
				return
			}
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != tt.wantField {
				t.Fatalf("run: got %v, want unprocessable at %s", err, tt.wantField)
			}
			if len(res.Trace) != 0 || res.Usage != (run.Usage{}) {
				t.Errorf("refused run: got trace %v and usage %+v, want nothing run", res.Trace, res.Usage)
			}
			if err := run.CheckTweaks(f, tt.tweaks); err == nil || !strings.Contains(err.Error(), `"`+strings.TrimPrefix(tt.wantField, "tweaks.")+`"`) {
				t.Errorf("CheckTweaks: got %v, want an error naming the node", err)
			}
		})
	}
}

// TestMemoryRowsThroughParser: Memory's DataFrame is the history one row
// per message, which a Parser writes field by field.
func TestMemoryRowsThroughParser(t *testing.T) {
	const memFlow = `{"nodes":[
		{"id":"mem","type":"Memory","data":{"n_messages":3}},
		{"id":"p","type":"ParserComponent","data":{"pattern":"{sender_name} said {text!r}","sep":"; "}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"mem","sourceHandle":"dataframe","target":"p"},{"source":"p","target":"out"}]}`
	h := newHarness(t)
	store := &memoryStore{}
	for i, text := range []string{"q1", "a1", "it's q2"} {
		sender, name := "User", "Ann"
		if i%2 == 1 {
			sender, name = "Machine", "AI"
		}
		store.msgs = append(store.msgs, &run.Message{TenantID: h.who.TenantID, UserID: h.who.UserID, SessionID: "s1", Sender: sender, SenderName: name, Text: text, RunID: "run_old"})
	}
	exec := *h.exec
	exec.Messages = store
	job := h.job(parseFlow(t, []byte(memFlow)), "")
	job.SessionID = "s1"
	res, err := exec.Execute(context.Background(), job)
	if err != nil {
		t.Fatal(err)
	}
	if want := `Ann said 'q1'; AI said 'a1'; Ann said "it's q2"`; res.Outputs[0].Text != want {
		t.Errorf("output: got %q, want %q", res.Outputs[0].Text, want)
	}
}

func TestBatchRunInAFlow(t *testing.T) {
	// Chunks of the run's text, one model call each, then a Parser lists
	// the answers: LangFlow's batch pattern on the simulated model.
	const batchFlow = `{"nodes":[
		{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
		{"id":"split","type":"SplitText","data":{"chunk_size":10,"chunk_overlap":0,"separator":" "}},
		{"id":"lm","type":"LanguageModelComponent","data":{"model_name":"gpt-4o-mini"}},
		{"id":"batch","type":"BatchRunComponent","data":%s},
		{"id":"p","type":"ParserComponent","data":{"pattern":"{batch_index}|{text}|{model_response}"}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"in","target":"split"},{"source":"split","sourceHandle":"dataframe","target":"batch","targetHandle":"df"},
		{"source":"lm","sourceHandle":"model_output","target":"batch","targetHandle":"model"},
		{"source":"batch","target":"p"},{"source":"p","target":"out"}]}`
	const input = "alpha beta gamma delta"
	tests := []struct {
		name   string
		params string
		prompt func(chunk string) string // what the answer should quote
	}{
		{"a column", `{"column_name":"text","system_message":"Translate."}`, func(c string) string { return c }},
		{"whole rows as TOML", `{}`, func(c string) string { return `[text] value = "` + c }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(fmt.Sprintf(batchFlow, tt.params))), input))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(res.Outputs[0].Text, "\n")
			chunks := []string{"alpha beta", "gamma", "delta"}
			if len(lines) != len(chunks) {
				t.Fatalf("answers: got %q, want one line per chunk %q", lines, chunks)
			}
			for i, c := range chunks {
				want := fmt.Sprintf("%d|%s|", i, c)
				if !strings.HasPrefix(lines[i], want) || !strings.Contains(strings.Join(strings.Fields(lines[i]), " "), tt.prompt(c)) {
					t.Errorf("row %d: got %q, want %q and an answer about %q", i, lines[i], want, tt.prompt(c))
				}
			}
			for _, tr := range res.Trace {
				if tr.NodeID == "batch" && (tr.Calls != len(chunks) || tr.Usage.InputTokens == 0) {
					t.Errorf("batch trace: got %d calls, usage %+v; want %d governed calls", tr.Calls, tr.Usage, len(chunks))
				}
			}
			if res.Steps != 6+int64(len(chunks)-1) {
				t.Errorf("steps: got %d, want a step per node and per extra row", res.Steps)
			}
		})
	}
	t.Run("max_steps stops a large batch", func(t *testing.T) {
		h := newHarness(t)
		job := h.job(parseFlow(t, []byte(fmt.Sprintf(batchFlow, `{"column_name":"text"}`))), input)
		job.Caps.MaxSteps = 5 // in, split, lm, batch's first row, its second
		_, err := h.exec.Execute(context.Background(), job)
		var re *run.RunError
		if !errors.As(err, &re) || re.Status != run.StatusStepLimitExceeded || re.NodeID != "batch" {
			t.Fatalf("run: got %v, want step_limit_exceeded at batch", err)
		}
	})
	t.Run("unknown column", func(t *testing.T) {
		h := newHarness(t)
		_, err := runFlow(t, h, fmt.Sprintf(batchFlow, `{"column_name":"body"}`), input, nil)
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.batch.column_name" || !strings.Contains(e.Message, "Available columns: text") {
			t.Fatalf("run: got %v, want unprocessable at nodes.batch.column_name listing the columns", err)
		}
	})
}
