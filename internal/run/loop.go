package run

import (
	"container/heap"
	"context"
	"slices"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// MaxLoopItems bounds the items one loop component iterates over. Every
// node of the body counts against the run's max_steps on every iteration
// as well, so a run's caps bound a loop further.
const MaxLoopItems = 1000

// unit is what the executor runs in turn: a node, or a loop component
// with its body.
type unit struct {
	node *flow.Node
	// body is the loop's body in run order; nil for other nodes.
	body []*flow.Node
}

// intMinHeap orders units by their first node's place in flow.Order.
type intMinHeap []int

func (h intMinHeap) Len() int           { return len(h) }
func (h intMinHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intMinHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intMinHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intMinHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// schedule groups nodes (in flow.Order's order) into units: each loop
// component (AllowsCycles) takes its body, the nodes downstream of its
// "item" output, which it runs once per item. The units are then ordered
// so that whatever feeds a body from outside runs before its loop, and
// whatever reads a body's or a loop's values runs after it.
func (s *state) schedule(nodes []*flow.Node) ([]unit, error) {
	pos := make(map[string]int, len(nodes))
	for i, n := range nodes {
		pos[n.ID] = i
	}
	group := make([]int, len(nodes))
	for i := range group {
		group[i] = -1
	}
	var units []unit
	for i, n := range nodes {
		if group[i] >= 0 {
			continue
		}
		u := unit{node: n}
		group[i] = len(units)
		if c := n.Component(); c != nil && c.AllowsCycles {
			var in []int
			for _, j := range s.loopBody(n, pos) {
				if group[j] >= 0 {
					return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID,
						"node %s (Loop): node %s of its body belongs to another loop's body too", n.ID, nodes[j].ID)
				}
				group[j] = len(units)
				in = append(in, j)
			}
			slices.Sort(in)
			u.body = make([]*flow.Node, 0, len(in))
			for _, j := range in {
				u.body = append(u.body, nodes[j])
			}
		}
		units = append(units, u)
	}
	if len(units) == len(nodes) {
		return units, nil // no loop: nodes are in order already
	}
	succ := make([][]int, len(units))
	indeg := make([]int, len(units))
	for _, e := range s.f.Edges {
		i, ok1 := pos[e.Source]
		j, ok2 := pos[e.Target]
		if !ok1 || !ok2 || group[i] == group[j] {
			continue
		}
		succ[group[i]] = append(succ[group[i]], group[j])
		indeg[group[j]]++
	}
	ready := &intMinHeap{}
	for u, d := range indeg {
		if d == 0 {
			heap.Push(ready, u)
		}
	}
	out := make([]unit, 0, len(units))
	for ready.Len() > 0 {
		u := heap.Pop(ready).(int)
		out = append(out, units[u])
		for _, v := range succ[u] {
			if indeg[v]--; indeg[v] == 0 {
				heap.Push(ready, v)
			}
		}
	}
	if len(out) < len(units) {
		for u, d := range indeg {
			if d > 0 && units[u].body != nil {
				n := units[u].node
				return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID,
					"node %s (Loop): a node outside the loop's body feeds the body and also depends on the loop's result", n.ID)
			}
		}
		return nil, errs.E(errs.Unprocessable, "the flow's loops cannot be ordered")
	}
	return out, nil
}

// loopBody returns the positions of the nodes downstream of the loop's
// "item" output (the loop itself excluded), as LangFlow's loop runs them.
func (s *state) loopBody(n *flow.Node, pos map[string]int) []int {
	// Only nodes of this run of nodes: inside an outer loop's body, the
	// outer loop's feedback does not lead back into it.
	seen := map[string]bool{n.ID: true}
	var queue []string
	for _, e := range s.f.Outgoing(n.ID) {
		if _, in := pos[e.Target]; e.SourceOutput == "item" && in && !seen[e.Target] {
			seen[e.Target] = true
			queue = append(queue, e.Target)
		}
	}
	var out []int
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		out = append(out, pos[id])
		for _, e := range s.f.Outgoing(id) {
			if _, in := pos[e.Target]; in && !seen[e.Target] {
				seen[e.Target] = true
				queue = append(queue, e.Target)
			}
		}
	}
	return out
}

// loop is LangFlow's LoopComponent: for each record of "data" (a DataFrame's
// rows, a list of Data, one Data or a Message's text), it sends the record
// as a Data on "item" and runs the body; what the body sends back into the
// loop's "item" input is that iteration's result. "done" is the results
// as a DataFrame, one row per record sent back. The body's nodes count
// steps on every iteration (max_steps) and the loop takes at most
// MaxLoopItems records.
func (s *state) loop(ctx context.Context, n *flow.Node, body []*flow.Node) error {
	v, ok := s.in(n, "data")
	if !ok {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".data", "node %s (Loop): nothing is connected to its data input", n.ID)
	}
	var items []row
	if v.data != nil {
		items = v.data.rows
	} else {
		items = []row{{{"text", v.text}}}
	}
	if len(items) > MaxLoopItems {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".data",
			"node %s (Loop): %d items to iterate, more than the %d a loop may take", n.ID, len(items), MaxLoopItems)
	}
	// What reached the body from outside it arrived before the loop ran;
	// every iteration starts from it.
	saved := make(map[string]map[string][]value, len(body))
	for _, b := range body {
		saved[b.ID] = cloneInputs(s.inputs[b.ID])
	}
	var results []row
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return ctxError(err)
		}
		for _, b := range body {
			s.inputs[b.ID] = cloneInputs(saved[b.ID])
			delete(s.outputs, b.ID)
		}
		delete(s.inputs[n.ID], "item")
		s.setOut(n.ID, "item", dataValue(&table{kind: oneData, rows: []row{slices.Clone(it)}}))
		if err := s.runNodes(ctx, body); err != nil {
			return err
		}
		for _, back := range s.inputs[n.ID]["item"] {
			if back.data != nil {
				results = append(results, back.data.rows...)
			} else {
				results = append(results, row{{"text", back.text}})
			}
		}
	}
	delete(s.inputs[n.ID], "item")
	list := make([]any, len(items))
	for i, it := range items {
		list[i] = rowMap(it)
	}
	// Like LangFlow's, the item output shows what was dispatched.
	if s.outputs[n.ID] == nil {
		s.outputs[n.ID] = map[string]value{}
	}
	s.outputs[n.ID]["item"] = dataValue(&table{kind: oneData, rows: []row{{{"count", float64(len(items))}, {"items", list}}}})
	s.setOut(n.ID, "done", dataValue(&table{kind: dataFrame, rows: results}))
	return nil
}

// cloneInputs copies a node's inputs so that an iteration's deliveries do
// not reach the next one.
func cloneInputs(in map[string][]value) map[string][]value {
	out := make(map[string][]value, len(in))
	for k, vs := range in {
		out[k] = slices.Clone(vs)
	}
	return out
}
