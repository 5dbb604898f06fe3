// Package flow owns the flow graph: it reads LangFlow 1.x exports, early
// (2023) LangFlow exports and Sluice's compact form, normalises all three
// onto one model (Flow, Node, Param, Edge), checks it against the catalog of
// components Sluice implements (Components), orders it for execution, and
// renders prompt templates with LangFlow's f-string rules. It executes
// nothing and never runs the Python source found in exports.
package flow

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// Format names the file format a flow was read from.
type Format string

// The formats Parse reads.
const (
	// FormatLangFlow is a LangFlow 1.x export: nodes carry their parameters in
	// data.node.template and edges name their handles in edge.data.
	FormatLangFlow Format = "langflow"
	// FormatLegacy is an early (2023) LangFlow export: LangChain node types
	// (LLMChain, PromptTemplate, OpenAI…) and pipe-delimited edge handles.
	FormatLegacy Format = "langflow-legacy"
	// FormatCompact is {"nodes":[{"id","type","data"}],"edges":[{"source","target"}]}
	// with parameters directly in data.
	FormatCompact Format = "compact"
)

// Flow is a normalised flow graph. Whatever the source format, a node's
// parameters are in Params, its component type is canonical, and every
// connection (including compact-form references by node id) is an Edge with
// both handle names filled in when they could be known.
//
// A Flow is plain data: lookups scan the slices, so a Flow built or edited by
// hand needs no re-indexing. Flows are capped at MaxNodes nodes, which keeps
// the scans cheap.
type Flow struct {
	// ID is the exported flow's id (a UUID in LangFlow exports), if any.
	ID string
	// Name and Description are the export's top-level name and description.
	Name        string
	Description string
	// EndpointName is LangFlow's endpoint_name, the alias the run API
	// accepts in place of the id, if any.
	EndpointName string
	// Format is the format the flow was read from.
	Format Format
	// Nodes are the components in file order (annotation notes dropped).
	// File order is the tie-break of Order.
	Nodes []*Node
	// Edges are the connections in file order, exact duplicates removed.
	Edges []*Edge
}

// Node returns the node with the given id, or nil.
func (f *Flow) Node(id string) *Node {
	for _, n := range f.Nodes {
		if n != nil && n.ID == id {
			return n
		}
	}
	return nil
}

// NodesOfType returns the nodes whose canonical Type is typ, in file order.
func (f *Flow) NodesOfType(typ string) []*Node {
	var out []*Node
	for _, n := range f.Nodes {
		if n != nil && n.Type == typ {
			out = append(out, n)
		}
	}
	return out
}

// Incoming returns the edges whose target is node id, in file order.
func (f *Flow) Incoming(id string) []*Edge {
	var out []*Edge
	for _, e := range f.Edges {
		if e != nil && e.Target == id {
			out = append(out, e)
		}
	}
	return out
}

// Outgoing returns the edges whose source is node id, in file order.
func (f *Flow) Outgoing(id string) []*Edge {
	var out []*Edge
	for _, e := range f.Edges {
		if e != nil && e.Source == id {
			out = append(out, e)
		}
	}
	return out
}

// EdgesInto returns the edges that feed input of node id, in file order
// (several only for list inputs such as Agent.tools).
func (f *Flow) EdgesInto(id, input string) []*Edge {
	var out []*Edge
	for _, e := range f.Edges {
		if e != nil && e.Target == id && e.TargetInput == input {
			out = append(out, e)
		}
	}
	return out
}

// Node is one component instance.
type Node struct {
	// ID is unique within the flow (e.g. "Prompt-xvuxC", "prompt_1").
	ID string
	// Type is the canonical component type after alias resolution (e.g.
	// "OpenAIModel" for a file's "OpenAIModelComponent"). For a type the
	// catalog does not know it is RawType unchanged, and Validate reports it.
	Type string
	// RawType is the type as written in the file.
	RawType string
	// DisplayName is the name the author sees in LangFlow, if any.
	DisplayName string
	// Params are the node's parameters by field name: template values in
	// LangFlow exports, data values in the compact form. Compact-form
	// references to other nodes are not here: they became Edges. The
	// component's Python source is not here either (see Code).
	Params map[string]Param
	// ToolMode is LangFlow's data.node.tool_mode: the component is offered to
	// an Agent as a tool through its "component_as_tool" output (ToolOutput).
	// It is also set on any node an edge leaves through ToolOutput.
	ToolMode bool
	// Outputs are the output names the file declares (data.node.outputs),
	// when it declares any. The catalog's outputs are authoritative.
	Outputs []string
	// Edited reports LangFlow's data.node.edited: the author changed the
	// component's Python source. Sluice runs its native implementation
	// regardless, so an edited node may behave differently than in LangFlow.
	Edited bool
	// Code is the Python source from template.code, if any. Sluice never
	// executes it; it is kept so CustomComponent nodes can be refused or
	// sandboxed and edited nodes audited.
	Code string
}

// Component returns the catalog entry for the node's type, or nil when the
// type is unknown.
func (n *Node) Component() *Component { return Lookup(n.Type) }

// Param returns the named parameter; the zero Param when absent.
func (n *Node) Param(name string) Param { return n.Params[name] }

// PromptVariables returns the variables of a Prompt node's template in order
// of first appearance, and nil for other nodes.
func (n *Node) PromptVariables() ([]string, error) {
	if n.Type != TypePrompt {
		return nil, nil
	}
	return Variables(n.Params["template"].String())
}

// Param is one node parameter.
type Param struct {
	// Value is the decoded JSON value: nil, string, float64, bool, []any or
	// map[string]any.
	Value any
	// LoadFromDB means Value is not the value but the name of a secret or
	// global variable to resolve at run time (LangFlow's load_from_db).
	LoadFromDB bool
	// Type is LangFlow's field type ("str", "int", "float", "bool", "prompt",
	// "model", "file", "other"…); empty when the format has none.
	Type string
	// Advanced and Show are LangFlow's UI hints (Show defaults to true).
	Advanced bool
	Show     bool
	// Password marks a secret field (LangFlow's password flag). Its Value,
	// when not LoadFromDB, is a secret written inline: never echo or log it.
	Password bool
}

// String returns the value as text: strings as they are, numbers in their
// shortest form, booleans as "true"/"false", nil as "", lists and objects as
// JSON. For a LoadFromDB parameter it is the variable's name, not its value.
func (p Param) String() string {
	switch v := p.Value.(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		if math.Abs(v) < 1e21 { // as JSON writes numbers
			return strconv.FormatFloat(v, 'f', -1, 64)
		}
		return strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
}

// Int returns the value as an integer and whether it is one: a whole
// float64, or a string holding an integer. Empty strings (LangFlow's "not
// set") report false.
func (p Param) Int() (int, bool) {
	switch v := p.Value.(type) {
	case float64:
		// Beyond 2^53 a float64 no longer holds every integer exactly.
		if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
			return 0, false
		}
		return int(v), true
	case string:
		i, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, false
		}
		return i, true
	}
	return 0, false
}

// Float returns the value as a number and whether it is one: a float64 or a
// string holding a number.
func (p Param) Float() (float64, bool) {
	switch v := p.Value.(type) {
	case float64:
		return v, true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, false
		}
		return f, true
	}
	return 0, false
}

// Bool returns the value as a boolean and whether it is one: a bool or the
// strings "true"/"false" (any case).
func (p Param) Bool() (bool, bool) {
	switch v := p.Value.(type) {
	case bool:
		return v, true
	case string:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true":
			return true, true
		case "false":
			return false, true
		}
	}
	return false, false
}

// Strings returns the value as a list of strings: a non-empty string is a
// one-element list, a list keeps its non-empty string elements. It suits
// fields that hold one or many values (File.path, URLComponent.urls).
func (p Param) Strings() []string {
	switch v := p.Value.(type) {
	case string:
		if v == "" {
			return nil
		}
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok && s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// Empty reports whether the parameter has no value: nil, "", an empty list
// or an empty object. A LoadFromDB parameter naming a variable is not empty.
func (p Param) Empty() bool {
	switch v := p.Value.(type) {
	case nil:
		return true
	case string:
		return v == ""
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

// Edge connects an output of one node to an input of another.
type Edge struct {
	// Source is the id of the node producing the value.
	Source string
	// SourceOutput is the output's name (e.g. "message", "text_output",
	// "model_output", "component_as_tool"). Formats that do not name outputs
	// get the source component's output whose type the target input
	// accepts.
	SourceOutput string
	// Target is the id of the node receiving the value.
	Target string
	// TargetInput is the input field's name (e.g. "input_value",
	// "system_message", "tools", or a Prompt template variable).
	TargetInput string
}
