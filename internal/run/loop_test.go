package run_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/run"
)

// lfNode and lfEdge write LangFlow 1.x export JSON: nodes with their
// template, edges with the handle objects LangFlow writes. A handle with
// no field is a loop's feedback, which LangFlow writes as the loop's own
// output handle ({"name": "item"}).
func lfNode(id, typ string, values map[string]any) map[string]any {
	tmpl := map[string]any{}
	for k, v := range values {
		tmpl[k] = map[string]any{"value": v}
	}
	return map[string]any{"id": id, "type": "genericNode", "data": map[string]any{"id": id, "type": typ, "node": map[string]any{"template": tmpl}}}
}

func lfEdge(src, srcType, output, tgt, tgtType, field string) map[string]any {
	th := map[string]any{"fieldName": field, "id": tgt, "inputTypes": []string{"Data"}, "type": "other"}
	if field == "" {
		th = map[string]any{"dataType": tgtType, "id": tgt, "name": "item", "output_types": []string{"Data"}}
	}
	return map[string]any{"source": src, "target": tgt, "data": map[string]any{
		"sourceHandle": map[string]any{"dataType": srcType, "id": src, "name": output, "output_types": []string{"Data"}},
		"targetHandle": th,
	}}
}

func lfFlow(t *testing.T, nodes, edges []map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"name": "Loop", "data": map[string]any{"nodes": nodes, "edges": edges}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loopFlow is shaped like LangFlow's loop starter (LoopTemplate): records
// into the loop's data, item into a Parser that feeds a model, the model's
// answer back into the loop's item, done through a Parser to the chat.
// The Parser's pattern comes from a node outside the body that the file
// lists last, so the loop must wait for it.
func loopFlow(t *testing.T) []byte {
	return lfFlow(t, []map[string]any{
		lfNode("ChatInput-1", "ChatInput", map[string]any{"should_store_message": false}),
		lfNode("SplitText-1", "SplitText", map[string]any{"chunk_size": 10, "chunk_overlap": 0, "separator": " "}),
		lfNode("LoopComponent-1", "LoopComponent", nil),
		lfNode("parser-1", "parser", map[string]any{"mode": "Parser"}),
		lfNode("LanguageModelComponent-1", "LanguageModelComponent", map[string]any{"model_name": "gpt-4o-mini"}),
		lfNode("parser-2", "parser", map[string]any{"mode": "Parser", "pattern": "{text}", "sep": "\n"}),
		lfNode("ChatOutput-1", "ChatOutput", map[string]any{"should_store_message": false}),
		lfNode("TextInput-1", "TextInput", map[string]any{"input_value": "Translate: {text}"}),
	}, []map[string]any{
		lfEdge("ChatInput-1", "ChatInput", "message", "SplitText-1", "SplitText", "data_inputs"),
		lfEdge("SplitText-1", "SplitText", "dataframe", "LoopComponent-1", "LoopComponent", "data"),
		lfEdge("LoopComponent-1", "LoopComponent", "item", "parser-1", "parser", "input_data"),
		lfEdge("TextInput-1", "TextInput", "text", "parser-1", "parser", "pattern"),
		lfEdge("parser-1", "parser", "parsed_text", "LanguageModelComponent-1", "LanguageModelComponent", "input_value"),
		lfEdge("LanguageModelComponent-1", "LanguageModelComponent", "text_output", "LoopComponent-1", "LoopComponent", ""),
		lfEdge("LoopComponent-1", "LoopComponent", "done", "parser-2", "parser", "input_data"),
		lfEdge("parser-2", "parser", "parsed_text", "ChatOutput-1", "ChatOutput", "input_value"),
	})
}

func TestLoopRunsBodyPerItem(t *testing.T) {
	h := newHarness(t)
	f := parseFlow(t, loopFlow(t))
	res, err := h.exec.Execute(context.Background(), h.job(f, "alpha beta gamma delta"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(res.Outputs[0].Text, "\n")
	chunks := []string{"alpha beta", "gamma", "delta"}
	if len(lines) != len(chunks) {
		t.Fatalf("done: got %q, want one answer per chunk %q", lines, chunks)
	}
	for i, c := range chunks {
		if !strings.Contains(lines[i], "Translate: "+c) {
			t.Errorf("answer %d: got %q, want one about %q", i, lines[i], "Translate: "+c)
		}
	}
	calls, total := 0, run.Usage{}
	var order []string
	for _, tr := range res.Trace {
		calls += tr.Calls * boolInt(tr.NodeID == "LanguageModelComponent-1")
		order = append(order, tr.NodeID)
		total.Add(tr.Usage)
	}
	if total != res.Usage {
		t.Errorf("trace usage: got %+v in all, want the run's %+v (the loop's own trace counts none of its body's)", total, res.Usage)
	}
	if calls != 3 {
		t.Errorf("model calls: got %d, want 3 (one per item); trace %v", calls, order)
	}
	// in, split, pattern, loop, 3 × (parser, model), parser, out
	if res.Steps != 12 {
		t.Errorf("steps: got %d, want 12; trace %v", res.Steps, order)
	}
	if got := h.userUse().TokensDay.Used; got != res.Usage.InputTokens+res.Usage.OutputTokens || got == 0 {
		t.Errorf("user tokens: got %d, want the run's %+v", got, res.Usage)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestLoopRespectsMaxSteps(t *testing.T) {
	h := newHarness(t)
	job := h.job(parseFlow(t, loopFlow(t)), "alpha beta gamma delta")
	job.Caps.MaxSteps = 7 // in, split, pattern, loop, first item's parser and model, second parser
	_, err := h.exec.Execute(context.Background(), job)
	var re *run.RunError
	if !errors.As(err, &re) || re.Status != run.StatusStepLimitExceeded || re.NodeID != "LanguageModelComponent-1" {
		t.Fatalf("run: got %v, want step_limit_exceeded in the body's second model call", err)
	}
}

func TestLoopCancelled(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	job := h.job(parseFlow(t, loopFlow(t)), "alpha beta gamma delta")
	job.Progress = func(p run.Progress) {
		if p.Node == "parser-1" {
			cancel() // during the first iteration
		}
	}
	res, err := h.exec.Execute(ctx, job)
	var re *run.RunError
	if !errors.As(err, &re) || re.Status != run.StatusCancelled {
		t.Fatalf("run: got %v, want cancelled", err)
	}
	if res.Usage.InputTokens != 0 {
		t.Errorf("usage: got %+v, want no model call after the cancel", res.Usage)
	}
}

func TestLoopTooManyItems(t *testing.T) {
	h := newHarness(t)
	words := strings.Repeat("abcdefgh ", run.MaxLoopItems+1) // one chunk each
	_, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, loopFlow(t)), words))
	var re *run.RunError
	if !errors.As(err, &re) || re.NodeID != "LoopComponent-1" || !strings.Contains(err.Error(), "more than the 1000") {
		t.Fatalf("run: got %v, want the loop refusing %d items", err, run.MaxLoopItems+1)
	}
}

// TestLoopOverArXivPapers is LangFlow's loop starter (LoopTemplate) as
// exported: arXiv's papers (its "data" output) into the loop, each paper
// through a Parser into a model, the model's answer back into the loop's
// item, done through a Parser to the chat.
func TestLoopOverArXivPapers(t *testing.T) {
	var queries []string
	srv := arxivServer(t, &queries)
	f := lfFlow(t, []map[string]any{
		lfNode("ChatInput-HBlBP", "ChatInput", map[string]any{"should_store_message": false}),
		lfNode("ArXivComponent-sSqo4", "ArXivComponent", map[string]any{"search_type": "all", "max_results": 2}),
		lfNode("LoopComponent-0aBsp", "LoopComponent", nil),
		lfNode("parser-lOwhH", "parser", map[string]any{"mode": "Parser", "pattern": "Translate to Portuguese: {title}"}),
		lfNode("LanguageModelComponent-V", "LanguageModelComponent", map[string]any{"model_name": "gpt-4o-mini"}),
		lfNode("parser-done", "parser", map[string]any{"mode": "Parser", "pattern": "{text}", "sep": "\n"}),
		lfNode("ChatOutput-01dLy", "ChatOutput", map[string]any{"should_store_message": false}),
	}, []map[string]any{
		lfEdge("ChatInput-HBlBP", "ChatInput", "message", "ArXivComponent-sSqo4", "ArXivComponent", "search_query"),
		lfEdge("ArXivComponent-sSqo4", "ArXivComponent", "data", "LoopComponent-0aBsp", "LoopComponent", "data"),
		lfEdge("LoopComponent-0aBsp", "LoopComponent", "item", "parser-lOwhH", "parser", "input_data"),
		lfEdge("parser-lOwhH", "parser", "parsed_text", "LanguageModelComponent-V", "LanguageModelComponent", "input_value"),
		lfEdge("LanguageModelComponent-V", "LanguageModelComponent", "text_output", "LoopComponent-0aBsp", "LoopComponent", ""),
		lfEdge("LoopComponent-0aBsp", "LoopComponent", "done", "parser-done", "parser", "input_data"),
		lfEdge("parser-done", "parser", "parsed_text", "ChatOutput-01dLy", "ChatOutput", "input_value"),
	})
	h := newHarness(t)
	exec := *h.exec
	exec.Tools = map[string]run.ToolService{run.ServiceArXiv: {BaseURL: srv.URL}}
	res, err := exec.Execute(context.Background(), h.job(parseFlow(t, f), "quantum"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(res.Outputs[0].Text, "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "Translate to Portuguese: Quantum Computation and") ||
		!strings.Contains(lines[1], "Translate to Portuguese: Quantum Computing in the NISQ") {
		t.Errorf("done: got %q, want one answer per paper, in order", lines)
	}
	if len(queries) != 1 || queries[0] != "quantum|2" {
		t.Errorf("arXiv queries: got %v, want [quantum|2]", queries)
	}
}
