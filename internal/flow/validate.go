package flow

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
)

// ProblemKind classifies a Problem, for callers and tests that must not
// depend on message text.
type ProblemKind string

// The problems Decode and Validate report.
const (
	// Malformed: invalid JSON, a structure of the wrong shape, a node
	// without an id.
	Malformed ProblemKind = "malformed"
	// TooLarge: the file is over MaxBytes (checked before decoding).
	TooLarge ProblemKind = "too_large"
	// TooManyNodes: more than MaxNodes components. Nothing else is checked.
	TooManyNodes ProblemKind = "too_many_nodes"
	// NoNodes: the flow has no components.
	NoNodes ProblemKind = "no_nodes"
	// DuplicateID: two nodes share an id.
	DuplicateID ProblemKind = "duplicate_id"
	// UnknownComponent: a node's type is not in Components.
	UnknownComponent ProblemKind = "unknown_component"
	// VendorComponent: a node's type needs a vendor's cloud service (see
	// Vendor), which Sluice does not run natively.
	VendorComponent ProblemKind = "vendor_component"
	// DanglingEdge: an edge's source or target node does not exist.
	DanglingEdge ProblemKind = "dangling_edge"
	// UnknownOutput: an edge leaves from an output the component lacks.
	UnknownOutput ProblemKind = "unknown_output"
	// UnknownInput: an edge enters a field that takes no edge.
	UnknownInput ProblemKind = "unknown_input"
	// NotATool: a component that is not a tool is wired as one.
	NotATool ProblemKind = "not_a_tool"
	// TypeMismatch: the output's type is not one the input accepts.
	TypeMismatch ProblemKind = "type_mismatch"
	// MultipleEdges: several edges enter an input that takes one.
	MultipleEdges ProblemKind = "multiple_edges"
	// MissingInput: a required input has neither a value nor an edge.
	MissingInput ProblemKind = "missing_input"
	// BadTemplate: a Prompt template does not parse, uses an unsupported
	// syntax, or names a variable after one of the Prompt's own fields.
	BadTemplate ProblemKind = "bad_template"
	// UnboundVariable: a Prompt variable has neither a value nor an edge.
	UnboundVariable ProblemKind = "unbound_variable"
	// Cycle: the graph has a cycle not broken by an AllowsCycles component.
	Cycle ProblemKind = "cycle"
)

// Problem is one thing wrong with a flow.
type Problem struct {
	Kind ProblemKind
	// NodeID is the node at fault, when there is one. For a dangling edge
	// it is the missing node's id; for a cycle, the cycle's first node in
	// file order.
	NodeID string
	// Field is the node's input, output or parameter at fault; for problems
	// not about one node, a path in the file ("data.nodes[3].id",
	// "edges[2].source") or "".
	Field string
	// Message says what is wrong, fit to show the flow's author.
	Message string
	// Nodes lists the ids on a cycle, in edge order.
	Nodes []string
}

// Path names the problem's place the way API error fields do:
// "nodes.<id>.<field>", "nodes.<id>", or Field alone.
func (p Problem) Path() string {
	switch {
	case p.NodeID != "" && p.Field != "":
		return "nodes." + p.NodeID + "." + p.Field
	case p.NodeID != "":
		return "nodes." + p.NodeID
	}
	return p.Field
}

func (p Problem) String() string {
	switch {
	case p.NodeID != "" && p.Field != "":
		return fmt.Sprintf("node %q, field %q: %s", p.NodeID, p.Field, p.Message)
	case p.NodeID != "":
		return fmt.Sprintf("node %q: %s", p.NodeID, p.Message)
	case p.Field != "":
		return p.Field + ": " + p.Message
	}
	return p.Message
}

// ValidationError is every problem found in a flow. Decode, Validate, Parse
// and Order return it. Through Unwrap it is also an *errs.Error (see
// ErrsError), so errs.CodeOf and the HTTP error mapping work on it
// unchanged; callers that show all problems use errors.As to get it.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	return "invalid flow: " + e.list(len(e.Problems))
}

// list describes up to limit problems.
func (e *ValidationError) list(limit int) string {
	if len(e.Problems) == 1 {
		return e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d problems: ", len(e.Problems))
	for i, p := range e.Problems {
		if i == limit {
			fmt.Fprintf(&b, "; and %d more", len(e.Problems)-limit)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// Has reports whether a problem of the kind was found.
func (e *ValidationError) Has(kind ProblemKind) bool {
	return slices.ContainsFunc(e.Problems, func(p Problem) bool { return p.Kind == kind })
}

// ErrsError is the error as a domain error: code errs.Unprocessable (HTTP
// 422), or errs.TooLarge (413) when the file was over MaxBytes; Field is the
// first problem's Path; Message lists the problems (the first 20).
func (e *ValidationError) ErrsError() *errs.Error {
	code := errs.Unprocessable
	if len(e.Problems) == 1 && e.Problems[0].Kind == TooLarge {
		code = errs.TooLarge
	}
	out := &errs.Error{Code: code, Message: "invalid flow: " + e.list(20)}
	if len(e.Problems) > 0 {
		out.Field = e.Problems[0].Path()
	}
	return out
}

// Unwrap returns ErrsError(), making the error an *errs.Error to errors.As.
func (e *ValidationError) Unwrap() error { return e.ErrsError() }

// Validate checks a flow against the catalog and returns a *ValidationError
// with every problem found, or nil. It reports: no components or more than
// MaxNodes (and then stops); nodes without ids and duplicate ids; unknown
// component types; edges whose source or target does not exist, that leave
// from an output the component lacks, enter a field that takes no edge,
// wire a non-tool as a tool, or join mismatched types; several edges into a
// single input; required inputs with neither a value nor an edge; Prompt
// templates that do not parse and variables with neither a value nor an
// edge (unless the Prompt only feeds a chain its unrendered template, whose
// free variables the chain fills from the run's input); cycles not broken
// by an AllowsCycles component.
func Validate(f *Flow) error {
	v := &validator{f: f}
	v.run()
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: v.problems}
}

type validator struct {
	f        *Flow
	problems []Problem
	byID     map[string]*Node
	inEdges  map[slot]int        // edges into each input
	outputs  map[string][]string // source node id → output names it feeds from
	vars     map[*Node][]string
}

type slot struct{ node, input string }

func (v *validator) add(kind ProblemKind, node, field, format string, args ...any) {
	v.problems = append(v.problems, Problem{Kind: kind, NodeID: node, Field: field, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) run() {
	f := v.f
	if f == nil {
		v.add(Malformed, "", "", "no flow")
		return
	}
	if len(f.Nodes) == 0 {
		v.add(NoNodes, "", "nodes", "flow has no components")
		return
	}
	if len(f.Nodes) > MaxNodes {
		v.add(TooManyNodes, "", "nodes", "flow has %d components, more than the limit of %d", len(f.Nodes), MaxNodes)
		return
	}
	v.byID = make(map[string]*Node, len(f.Nodes))
	v.inEdges = map[slot]int{}
	v.outputs = map[string][]string{}
	v.vars = map[*Node][]string{}
	v.nodes()
	v.edges()
	for _, n := range f.Nodes {
		if n == nil {
			continue
		}
		if c := Lookup(n.Type); c != nil {
			v.required(n, c)
			if c.Type == TypePrompt {
				v.prompt(n, c)
			}
		}
	}
	v.problems = append(v.problems, cycleProblems(newGraph(f))...)
}

func (v *validator) nodes() {
	for i, n := range v.f.Nodes {
		if n == nil {
			v.add(Malformed, "", fmt.Sprintf("nodes[%d]", i), "node %d is null", i)
			continue
		}
		switch {
		case n.ID == "":
			v.add(Malformed, "", fmt.Sprintf("nodes[%d].id", i), "node %d (%s) has no id", i, n.Type)
		case v.byID[n.ID] != nil:
			v.add(DuplicateID, n.ID, "id", "more than one node has the id %q", n.ID)
		default:
			v.byID[n.ID] = n
		}
		if Lookup(n.Type) == nil {
			switch {
			case n.Type == "":
				v.add(UnknownComponent, n.ID, "type", "node has no component type")
			case Vendor(n.Type) != "":
				v.add(VendorComponent, n.ID, "type",
					"component %s calls %s, an outside service Sluice does not run natively; run flows that use it through the LangFlow front (see docs/langflow-front.md)",
					n.Type, Vendor(n.Type))
			default:
				v.add(UnknownComponent, n.ID, "type", "unknown component type %q: Sluice does not implement it", n.Type)
			}
		}
	}
}

func (v *validator) edges() {
	var order []slot // inputs with edges, in order of first edge
	for i, e := range v.f.Edges {
		if e == nil {
			v.add(Malformed, "", fmt.Sprintf("edges[%d]", i), "edge %d is null", i)
			continue
		}
		src, tgt := v.byID[e.Source], v.byID[e.Target]
		switch {
		case e.Source == "":
			v.add(DanglingEdge, "", fmt.Sprintf("edges[%d].source", i), "edge %d has no source node", i)
		case src == nil:
			v.add(DanglingEdge, e.Source, e.SourceOutput, "edge %d into node %q comes from node %q, which does not exist", i, e.Target, e.Source)
		}
		switch {
		case e.Target == "":
			v.add(DanglingEdge, "", fmt.Sprintf("edges[%d].target", i), "edge %d has no target node", i)
		case tgt == nil:
			v.add(DanglingEdge, e.Target, e.TargetInput, "edge %d from node %q goes to node %q, which does not exist", i, e.Source, e.Target)
		}
		if src == nil || tgt == nil {
			continue
		}
		v.outputs[src.ID] = append(v.outputs[src.ID], e.SourceOutput)
		if e.TargetInput != "" {
			s := slot{tgt.ID, e.TargetInput}
			if v.inEdges[s] == 0 {
				order = append(order, s)
			}
			v.inEdges[s]++
		}
		sc, tc := Lookup(src.Type), Lookup(tgt.Type)
		out, outOK := v.output(i, e, src, sc)
		in, inOK := v.input(i, e, tgt, tc)
		if outOK && inOK && out.Type != "" && len(in.Types) > 0 && !slices.Contains(in.Types, out.Type) {
			v.add(TypeMismatch, tgt.ID, e.TargetInput, "input %q takes %s, but node %q output %q gives %s",
				e.TargetInput, strings.Join(in.Types, " or "), src.ID, e.SourceOutput, out.Type)
		}
	}
	for _, s := range order {
		if v.inEdges[s] < 2 {
			continue
		}
		n := v.byID[s.node]
		if c := Lookup(n.Type); c != nil && !c.IsCustom {
			if in, ok := c.Input(s.input); !ok || !in.List {
				v.add(MultipleEdges, n.ID, s.input, "input %q has %d incoming edges; it takes one", s.input, v.inEdges[s])
			}
		}
	}
}

// output checks the source end of edge i and returns the output it leaves
// from, when the catalog knows it.
func (v *validator) output(i int, e *Edge, n *Node, c *Component) (Output, bool) {
	if c == nil || c.IsCustom {
		return Output{}, false
	}
	switch {
	case e.SourceOutput == "":
		v.add(UnknownOutput, n.ID, "", "edge %d leaves node %q without naming an output", i, n.ID)
	case e.SourceOutput == ToolOutput:
		if !c.IsTool {
			v.add(NotATool, n.ID, ToolOutput, "%s cannot be used as an agent tool", c.Type)
			return Output{}, false
		}
		return Output{Name: ToolOutput, Type: typeTool}, true
	default:
		if out, ok := c.Output(e.SourceOutput); ok {
			return out, true
		}
		v.add(UnknownOutput, n.ID, e.SourceOutput, "%s has no output %q (it has %s)", c.Type, e.SourceOutput, outputNames(c))
	}
	return Output{}, false
}

// input checks the target end of edge i and returns the input it enters.
func (v *validator) input(i int, e *Edge, n *Node, c *Component) (Input, bool) {
	if c == nil || c.IsCustom {
		return Input{}, false
	}
	if e.TargetInput == "" {
		v.add(UnknownInput, n.ID, "", "edge %d from node %q names no input of %s and none fits", i, e.Source, c.Type)
		return Input{}, false
	}
	if in, ok := c.Input(e.TargetInput); ok && in.Edge {
		return in, true
	}
	if c.ToolParams && !slices.ContainsFunc(c.Inputs, func(in Input) bool { return in.Name == e.TargetInput }) {
		return Input{Name: e.TargetInput, Edge: true, Types: []string{typeMessage, typeData, typeDataFrame}}, true
	}
	if c.Type == TypePrompt && slices.Contains(v.promptVars(n), e.TargetInput) {
		return Input{Name: e.TargetInput, Edge: true}, true // any value renders as text
	}
	v.add(UnknownInput, n.ID, e.TargetInput, "%s has no input %q that takes an edge", c.Type, e.TargetInput)
	return Input{}, false
}

func outputNames(c *Component) string {
	if len(c.Outputs) == 0 {
		return "none"
	}
	names := make([]string, len(c.Outputs))
	for i, o := range c.Outputs {
		names[i] = fmt.Sprintf("%q", o.Name)
	}
	return strings.Join(names, ", ")
}

func (v *validator) promptVars(n *Node) []string {
	vars, ok := v.vars[n]
	if !ok {
		vars, _ = Variables(n.Params["template"].String())
		v.vars[n] = vars
	}
	return vars
}

func (v *validator) required(n *Node, c *Component) {
	for _, in := range c.Inputs {
		if !in.Required || v.inEdges[slot{n.ID, in.Name}] > 0 {
			continue
		}
		switch {
		case in.EdgeOnly:
			v.add(MissingInput, n.ID, in.Name, "required input %q has no incoming edge", in.Name)
		case n.Params[in.Name].Empty():
			v.add(MissingInput, n.ID, in.Name, "required input %q has no value and no incoming edge", in.Name)
		}
	}
}

func (v *validator) prompt(n *Node, c *Component) {
	double, _ := n.Params["use_double_brackets"].Bool()
	switch mode := n.Params["mode"].String(); {
	case double:
		v.add(BadTemplate, n.ID, "use_double_brackets", "{{variable}} templates are not supported; use {variable}")
	case mode != "" && mode != "f-string" && mode != "{variable}":
		v.add(BadTemplate, n.ID, "mode", "template mode %q is not supported; use {variable}", mode)
	}
	tmpl := n.Params["template"].String()
	vars, err := Variables(tmpl)
	if err != nil {
		v.add(BadTemplate, n.ID, "template", "%s", strings.TrimPrefix(err.Error(), "template: "))
		return
	}
	for _, name := range vars {
		if _, own := c.Input(name); own {
			v.add(BadTemplate, n.ID, name, "variable {%s} has the name of one of the prompt's own fields; rename it", name)
		}
	}
	// A Prompt whose only consumers take its unrendered template (an
	// LLMChain) leaves its free variables to the chain's input.
	outs := v.outputs[n.ID]
	if len(outs) > 0 && !slices.ContainsFunc(outs, func(o string) bool { return o != "template" }) {
		return
	}
	for _, name := range vars {
		if _, own := c.Input(name); own {
			continue
		}
		if v.inEdges[slot{n.ID, name}] == 0 && n.Params[name].Empty() {
			v.add(UnboundVariable, n.ID, name, "prompt variable {%s} has no value and no incoming edge", name)
		}
	}
}
