package flow

import (
	"container/heap"
	"fmt"
	"strings"
)

// Order returns the flow's nodes in a deterministic topological order: every
// node after the nodes that feed it, ties broken by file order. Tools come
// before the Agent they feed. Feedback edges into an AllowsCycles component
// are ignored; any other cycle makes Order fail with a *ValidationError
// naming the nodes on each cycle. Edges to missing nodes are ignored, so
// Order is meaningful on any flow but complete only on a valid one.
func Order(f *Flow) ([]*Node, error) {
	if f == nil {
		return nil, &ValidationError{Problems: []Problem{{Kind: Malformed, Message: "no flow"}}}
	}
	g := newGraph(f)
	if ps := cycleProblems(g); len(ps) > 0 {
		return nil, &ValidationError{Problems: ps}
	}
	indeg := make([]int, len(g.nodes))
	for _, succ := range g.succ {
		for _, w := range succ {
			indeg[w]++
		}
	}
	ready := &intHeap{}
	for i, d := range indeg {
		if d == 0 {
			heap.Push(ready, i)
		}
	}
	out := make([]*Node, 0, len(g.nodes))
	for ready.Len() > 0 {
		u := heap.Pop(ready).(int)
		if g.nodes[u] != nil {
			out = append(out, g.nodes[u])
		}
		for _, w := range g.succ[u] {
			if indeg[w]--; indeg[w] == 0 {
				heap.Push(ready, w)
			}
		}
	}
	return out, nil
}

// graph is the flow as adjacency lists over node positions, without
// feedback edges. Edges attach to the first node with an id.
type graph struct {
	nodes []*Node
	succ  [][]int
}

func newGraph(f *Flow) *graph {
	g := &graph{nodes: f.Nodes, succ: make([][]int, len(f.Nodes))}
	idx := make(map[string]int, len(f.Nodes))
	for i, n := range f.Nodes {
		if n == nil {
			continue
		}
		if _, dup := idx[n.ID]; !dup {
			idx[n.ID] = i
		}
	}
	type pair struct{ u, v int }
	var edges []pair
	for _, e := range f.Edges {
		if e == nil {
			continue
		}
		u, ok1 := idx[e.Source]
		v, ok2 := idx[e.Target]
		if ok1 && ok2 {
			edges = append(edges, pair{u, v})
			g.succ[u] = append(g.succ[u], v)
		}
	}
	// An edge within a strongly connected component into a loop component
	// is the loop's feedback; drop it so the rest can be ordered.
	loops := false
	for _, n := range f.Nodes {
		if n != nil {
			if c := Lookup(n.Type); c != nil && c.AllowsCycles {
				loops = true
				break
			}
		}
	}
	if !loops {
		return g
	}
	comp := components(g.succ)
	g.succ = make([][]int, len(f.Nodes))
	for _, e := range edges {
		if comp[e.u] == comp[e.v] {
			if c := Lookup(g.nodes[e.v].Type); c != nil && c.AllowsCycles {
				continue
			}
		}
		g.succ[e.u] = append(g.succ[e.u], e.v)
	}
	return g
}

// cycleProblems reports one cycle per strongly connected component that has
// one, in file order of the component's first node.
func cycleProblems(g *graph) []Problem {
	comp := components(g.succ)
	size := map[int]int{}
	for _, c := range comp {
		size[c]++
	}
	var ps []Problem
	done := map[int]bool{}
	for s := range g.nodes {
		c := comp[s]
		if done[c] {
			continue
		}
		done[c] = true
		cycle := g.cycleFrom(s, comp)
		if size[c] == 1 && cycle == nil {
			continue // a node on no cycle
		}
		ids := make([]string, len(cycle))
		for i, u := range cycle {
			ids[i] = g.nodes[u].ID
		}
		ps = append(ps, Problem{
			Kind:    Cycle,
			NodeID:  ids[0],
			Message: fmt.Sprintf("cycle: %s → %s", strings.Join(ids, " → "), ids[0]),
			Nodes:   ids,
		})
	}
	return ps
}

// cycleFrom returns a shortest cycle through s inside its component, or nil
// when s is on none.
func (g *graph) cycleFrom(s int, comp []int) []int {
	parent := map[int]int{s: -1}
	queue := []int{s}
	for len(queue) > 0 {
		u := queue[0]
		queue = queue[1:]
		for _, w := range g.succ[u] {
			if w == s {
				var path []int
				for x := u; x != -1; x = parent[x] {
					path = append(path, x)
				}
				for i, j := 0, len(path)-1; i < j; i, j = i+1, j-1 {
					path[i], path[j] = path[j], path[i]
				}
				return path
			}
			if _, seen := parent[w]; !seen && comp[w] == comp[s] {
				parent[w] = u
				queue = append(queue, w)
			}
		}
	}
	return nil
}

// components labels each node with its strongly connected component
// (Tarjan's algorithm, iterative so deep graphs cannot exhaust the stack).
func components(succ [][]int) []int {
	n := len(succ)
	index := make([]int, n) // 0: unvisited; else visit order + 1
	low := make([]int, n)
	onStack := make([]bool, n)
	comp := make([]int, n)
	var stack []int
	type frame struct{ v, next int }
	var calls []frame
	counter, ncomp := 0, 0
	visit := func(v int) {
		counter++
		index[v], low[v] = counter, counter
		stack = append(stack, v)
		onStack[v] = true
		calls = append(calls, frame{v: v})
	}
	for s := range n {
		if index[s] != 0 {
			continue
		}
		visit(s)
		for len(calls) > 0 {
			top := &calls[len(calls)-1]
			v := top.v
			if top.next < len(succ[v]) {
				w := succ[v][top.next]
				top.next++
				if index[w] == 0 {
					visit(w)
				} else if onStack[w] && index[w] < low[v] {
					low[v] = index[w]
				}
				continue
			}
			if low[v] == index[v] {
				for {
					w := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					onStack[w] = false
					comp[w] = ncomp
					if w == v {
						break
					}
				}
				ncomp++
			}
			calls = calls[:len(calls)-1]
			if len(calls) > 0 {
				if u := calls[len(calls)-1].v; low[v] < low[u] {
					low[u] = low[v]
				}
			}
		}
	}
	return comp
}

// intHeap is a min-heap of node positions.
type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
