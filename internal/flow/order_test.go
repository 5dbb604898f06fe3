package flow_test

import (
	"slices"
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

func TestOrderTieBreakIsFileOrder(t *testing.T) {
	// Independent nodes keep file order; dependants wait for their sources.
	f := parseFile(t, []byte(`{"nodes":[
		{"id":"z","type":"TextOutput"},
		{"id":"b","type":"TextInput","data":{"input_value":"1"}},
		{"id":"a","type":"TextInput","data":{"input_value":"2"}},
		{"id":"p","type":"Prompt","data":{"template":"{x}{y}"}}
	],"edges":[
		{"source":"p","target":"z"},
		{"source":"a","target":"p","targetHandle":"y"},
		{"source":"b","target":"p","targetHandle":"x"}
	]}`))
	if got, want := ids(checkOrder(t, f)), []string{"b", "a", "p", "z"}; !slices.Equal(got, want) {
		t.Errorf("Order = %q, want %q", got, want)
	}
}

func TestOrderDiamond(t *testing.T) {
	f := parseFile(t, []byte(`{"nodes":[
		{"id":"out","type":"ChatOutput"},
		{"id":"m","type":"OpenAI"},
		{"id":"sys","type":"Prompt","data":{"template":"You answer about {topic}."}},
		{"id":"in","type":"ChatInput"}
	],"edges":[
		{"source":"in","target":"sys","targetHandle":"topic"},
		{"source":"in","target":"m","targetHandle":"input_value"},
		{"source":"sys","target":"m","targetHandle":"system_message"},
		{"source":"m","target":"out"}
	]}`))
	if got, want := ids(checkOrder(t, f)), []string{"in", "sys", "m", "out"}; !slices.Equal(got, want) {
		t.Errorf("Order = %q, want %q", got, want)
	}
}

func TestOrderReportsCycles(t *testing.T) {
	f := &flow.Flow{
		Nodes: []*flow.Node{
			{ID: "a", Type: "Prompt"}, {ID: "b", Type: "Prompt"}, {ID: "c", Type: "Prompt"},
			{ID: "d", Type: "Prompt"}, {ID: "e", Type: "Prompt"},
		},
		Edges: []*flow.Edge{
			{Source: "a", Target: "b"}, {Source: "b", Target: "c"}, {Source: "c", Target: "a"},
			{Source: "d", Target: "e"}, {Source: "e", Target: "d"},
			{Source: "c", Target: "missing"},
		},
	}
	_, err := flow.Order(f)
	ps := problemsOf(t, err)
	if len(ps) != 2 {
		t.Fatalf("got %d problems, want 2 cycles: %+v", len(ps), ps)
	}
	if !slices.Equal(ps[0].Nodes, []string{"a", "b", "c"}) || ps[0].NodeID != "a" {
		t.Errorf("first cycle = %q at %q, want [a b c] at a", ps[0].Nodes, ps[0].NodeID)
	}
	if !slices.Equal(ps[1].Nodes, []string{"d", "e"}) {
		t.Errorf("second cycle = %q, want [d e]", ps[1].Nodes)
	}
	if _, err := flow.Order(nil); err == nil {
		t.Errorf("Order(nil) succeeded")
	}
}

// withLoop registers a loop component for the test: the catalog has none yet.
func withLoop(t *testing.T) {
	t.Helper()
	flow.Components["TestLoop"] = &flow.Component{
		Type: "TestLoop",
		Inputs: []flow.Input{
			{Name: "data", Edge: true, Types: []string{"Message", "Data"}},
			{Name: "item", Edge: true, Types: []string{"Message"}},
		},
		Outputs:      []flow.Output{{Name: "item", Type: "Message"}, {Name: "done", Type: "Message"}},
		AllowsCycles: true,
	}
	t.Cleanup(func() { delete(flow.Components, "TestLoop") })
}

func TestLoopComponentAllowsCycle(t *testing.T) {
	withLoop(t)
	f := parseFile(t, []byte(`{"nodes":[
		{"id":"body","type":"Prompt","data":{"template":"Summarise {x}"}},
		{"id":"loop","type":"TestLoop"},
		{"id":"in","type":"TextInput","data":{"input_value":"a b c"}},
		{"id":"out","type":"TextOutput"}
	],"edges":[
		{"source":"in","target":"loop","targetHandle":"data"},
		{"source":"loop","sourceHandle":"item","target":"body","targetHandle":"x"},
		{"source":"body","target":"loop","targetHandle":"item"},
		{"source":"loop","sourceHandle":"done","target":"out"}
	]}`))
	order, err := flow.Order(f)
	if err != nil {
		t.Fatalf("Order: %v", err)
	}
	if got, want := ids(order), []string{"in", "loop", "body", "out"}; !slices.Equal(got, want) {
		t.Errorf("Order = %q, want %q", got, want)
	}
}

func TestLoopDoesNotExcuseOtherCycles(t *testing.T) {
	withLoop(t)
	// p ↔ q is a cycle of its own inside the loop's body.
	_, err := flow.Parse([]byte(`{"nodes":[
		{"id":"loop","type":"TestLoop","data":{"data":"x"}},
		{"id":"p","type":"Prompt","data":{"template":"{v}"}},
		{"id":"q","type":"Prompt","data":{"template":"q"}}
	],"edges":[
		{"source":"loop","sourceHandle":"item","target":"p","targetHandle":"v"},
		{"source":"p","target":"q","targetHandle":"tool_placeholder"},
		{"source":"q","target":"p","targetHandle":"tool_placeholder"},
		{"source":"q","target":"loop","targetHandle":"item"}
	]}`))
	ps := problemsOf(t, err)
	if p, ok := findProblem(ps, flow.Cycle, "p", ""); !ok || !slices.Equal(p.Nodes, []string{"p", "q"}) {
		t.Errorf("want a cycle p → q; got %+v", ps)
	}
}
