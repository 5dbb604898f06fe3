package flow

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxBytes bounds a flow file. Larger input is refused before it is decoded.
const MaxBytes = 5 << 20

// MaxNodes bounds the number of components in a flow (notes not counted).
const MaxNodes = 500

// Parse reads a flow in any of the three formats, normalises it (Decode) and
// validates it (Validate). Every error is a *ValidationError listing all the
// problems found; on error the flow is nil. Callers that want the graph of
// an invalid flow (to show it with its problems) call Decode and Validate
// themselves.
func Parse(data []byte) (*Flow, error) {
	f, err := Decode(data)
	if err != nil {
		return nil, err
	}
	if err := Validate(f); err != nil {
		return nil, err
	}
	return f, nil
}

// Decode reads a flow and normalises it onto the model without validating
// it. The format is detected from the content:
//
//   - nodes with data.node (LangFlow's node shape) and edges with object
//     handles in edge.data are FormatLangFlow; the top-level
//     sourceHandle/targetHandle strings are never needed;
//   - LangFlow-shaped nodes with pipe-delimited handle strings
//     ("Type|id|Base…", "ExpectedType|field|targetId") are FormatLegacy;
//   - anything else is FormatCompact.
//
// Nodes are read from data.nodes, or from nodes at the top level. Notes
// (noteNode) are dropped. Aliased types become canonical (Node.Type) with the
// file's spelling kept in RawType. Handle names a format leaves out are
// inferred from the catalog: an edge's output is the source output whose
// type the target input accepts, and a compact edge without targetHandle
// goes to the first free target input (first free template variable for a
// Prompt) that accepts the source's output. A compact-form parameter naming
// another node on an EdgeOnly input ("llm": "llm_1") becomes an edge.
//
// Decode fails only on input it cannot read: more than MaxBytes, invalid
// JSON (the error gives line and column), or a structure of the wrong shape
// (the error gives the path). The error is a *ValidationError.
func Decode(data []byte) (*Flow, error) {
	if len(data) > MaxBytes {
		return nil, &ValidationError{Problems: []Problem{{
			Kind:    TooLarge,
			Message: fmt.Sprintf("flow is %d bytes, more than the limit of %d", len(data), MaxBytes),
		}}}
	}
	data = bytes.TrimPrefix(data, []byte("\uFEFF"))
	var root any
	if err := json.Unmarshal(data, &root); err != nil {
		return nil, &ValidationError{Problems: []Problem{jsonProblem(data, err)}}
	}
	d := &decoder{}
	f := d.flow(root)
	if len(d.problems) > 0 {
		return nil, &ValidationError{Problems: d.problems}
	}
	return f, nil
}

// jsonProblem says where the JSON went wrong.
func jsonProblem(data []byte, err error) Problem {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		off := min(max(int(syn.Offset), 0), len(data))
		line := 1 + bytes.Count(data[:off], []byte("\n"))
		col := 1 + utf8.RuneCount(data[bytes.LastIndexByte(data[:off], '\n')+1:off])
		return Problem{Kind: Malformed, Message: fmt.Sprintf("invalid JSON at line %d, column %d (byte %d): %v", line, col, off, err)}
	}
	return Problem{Kind: Malformed, Message: fmt.Sprintf("invalid JSON: %v", err)}
}

type decoder struct {
	problems []Problem
}

func (d *decoder) bad(path, format string, args ...any) {
	d.problems = append(d.problems, Problem{Kind: Malformed, Field: path, Message: fmt.Sprintf(format, args...)})
}

// object returns v as an object; absent or null is nil, anything else is a
// problem at path.
func (d *decoder) object(v any, path string) map[string]any {
	switch t := v.(type) {
	case nil:
		return nil
	case map[string]any:
		return t
	}
	d.bad(path, "%s must be an object, not %s", path, kindOf(v))
	return nil
}

// array returns v as an array; absent or null is nil.
func (d *decoder) array(v any, path string) []any {
	switch t := v.(type) {
	case nil:
		return nil
	case []any:
		return t
	}
	d.bad(path, "%s must be an array, not %s", path, kindOf(v))
	return nil
}

// id returns a node id: a string, or a number written as JSON wrote it.
func (d *decoder) id(v any, path string) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	}
	d.bad(path, "%s must be a string, not %s", path, kindOf(v))
	return ""
}

// idString is id without complaint: for fields Sluice only carries along.
func idString(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return str(v)
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// str returns v if it is a string, else "".
func str(v any) string {
	s, _ := v.(string)
	return s
}

func (d *decoder) flow(root any) *Flow {
	top, ok := root.(map[string]any)
	if !ok {
		d.bad("", "a flow must be a JSON object, not %s", kindOf(root))
		return nil
	}
	f := &Flow{
		ID:           idString(top["id"]),
		Name:         str(top["name"]),
		Description:  str(top["description"]),
		EndpointName: str(top["endpoint_name"]),
	}
	graph, prefix := top, ""
	if data, ok := top["data"].(map[string]any); ok {
		if _, has := data["nodes"]; has {
			graph, prefix = data, "data."
		}
	}
	if _, has := graph["nodes"]; !has {
		d.bad("nodes", "no nodes: a flow has data.nodes (LangFlow export) or nodes (compact form)")
		return nil
	}
	nodes := d.array(graph["nodes"], prefix+"nodes")
	edges := d.array(graph["edges"], prefix+"edges")
	if len(d.problems) > 0 {
		return nil
	}
	f.Format = detect(nodes, edges)

	for i, v := range nodes {
		path := fmt.Sprintf("%snodes[%d]", prefix, i)
		var n *Node
		if f.Format == FormatCompact {
			n = d.compactNode(v, path)
		} else {
			n = d.langflowNode(v, path)
		}
		if n != nil {
			n.Type = n.RawType
			if c := Lookup(n.RawType); c != nil {
				n.Type = c.Type
			}
			f.Nodes = append(f.Nodes, n)
		}
	}
	for i, v := range edges {
		path := fmt.Sprintf("%sedges[%d]", prefix, i)
		if e := d.edge(v, path, f.Format); e != nil {
			f.Edges = append(f.Edges, e)
		}
	}
	if len(d.problems) > 0 {
		return nil
	}
	resolve(f)
	return f
}

// isNote reports whether a raw node is an annotation.
func isNote(node, data map[string]any) bool {
	return noteTypes[str(node["type"])] || noteTypes[str(data["type"])]
}

// detect picks the format from the shapes of the nodes and edges.
func detect(nodes, edges []any) Format {
	langflow := false
	var inners []map[string]any
	for _, v := range nodes {
		nm, _ := v.(map[string]any)
		data, _ := nm["data"].(map[string]any)
		if isNote(nm, data) {
			continue
		}
		inner, ok := data["node"].(map[string]any)
		if ok || str(nm["type"]) == "genericNode" {
			langflow = true
			inners = append(inners, inner)
		}
	}
	if !langflow {
		return FormatCompact
	}
	for _, v := range edges {
		em, _ := v.(map[string]any)
		ed, _ := em["data"].(map[string]any)
		_, sh := ed["sourceHandle"].(map[string]any)
		_, th := ed["targetHandle"].(map[string]any)
		if sh || th {
			return FormatLangFlow
		}
	}
	for _, v := range edges {
		em, _ := v.(map[string]any)
		if strings.Contains(str(em["sourceHandle"]), "|") || strings.Contains(str(em["targetHandle"]), "|") {
			return FormatLegacy
		}
	}
	// No edges to tell by: 1.x nodes declare outputs; 2023 templates name
	// their LangChain class in _type where 1.x writes "Component".
	for _, inner := range inners {
		if _, ok := inner["outputs"]; ok {
			return FormatLangFlow
		}
		tmpl, _ := inner["template"].(map[string]any)
		if t := str(tmpl["_type"]); t != "" && t != "Component" {
			return FormatLegacy
		}
	}
	return FormatLangFlow
}

// langflowNode reads a node of a LangFlow export (1.x or 2023); nil for a
// note or a node too broken to read.
func (d *decoder) langflowNode(v any, path string) *Node {
	nm, ok := v.(map[string]any)
	if !ok {
		d.bad(path, "%s must be an object, not %s", path, kindOf(v))
		return nil
	}
	data := d.object(nm["data"], path+".data")
	if isNote(nm, data) {
		return nil
	}
	n := &Node{ID: d.id(nm["id"], path+".id"), RawType: str(data["type"])}
	if n.ID == "" {
		n.ID = d.id(data["id"], path+".data.id")
	}
	inner := d.object(data["node"], path+".data.node")
	tmpl := d.object(inner["template"], path+".data.node.template")
	if n.RawType == "" {
		if t := str(tmpl["_type"]); t != "" && t != "Component" {
			n.RawType = t
		} else if t := str(nm["type"]); t != "genericNode" {
			n.RawType = t
		}
	}
	n.DisplayName = str(inner["display_name"])
	if n.DisplayName == "" {
		n.DisplayName = str(data["display_name"])
	}
	n.Params = make(map[string]Param, len(tmpl))
	for name, fv := range tmpl {
		field, ok := fv.(map[string]any)
		// "_type" and the like are metadata; scalar entries ("is_refresh") are
		// not fields.
		if !ok || strings.HasPrefix(name, "_") {
			continue
		}
		if name == "code" {
			n.Code = str(field["value"])
			continue
		}
		p := Param{Value: field["value"], Type: str(field["type"]), Show: true}
		p.LoadFromDB, _ = field["load_from_db"].(bool)
		p.Advanced, _ = field["advanced"].(bool)
		p.Password, _ = field["password"].(bool)
		if show, ok := field["show"].(bool); ok {
			p.Show = show
		}
		n.Params[name] = p
	}
	n.ToolMode, _ = inner["tool_mode"].(bool)
	n.Edited, _ = inner["edited"].(bool)
	for _, o := range d.array(inner["outputs"], path+".data.node.outputs") {
		if name := str(mapOf(o)["name"]); name != "" {
			n.Outputs = append(n.Outputs, name)
		}
	}
	return n
}

func mapOf(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// compactNode reads {"id","type","data":{param: value}}.
func (d *decoder) compactNode(v any, path string) *Node {
	nm, ok := v.(map[string]any)
	if !ok {
		d.bad(path, "%s must be an object, not %s", path, kindOf(v))
		return nil
	}
	data := d.object(nm["data"], path+".data")
	if isNote(nm, data) {
		return nil
	}
	n := &Node{
		ID:          d.id(nm["id"], path+".id"),
		RawType:     str(nm["type"]),
		DisplayName: str(nm["display_name"]),
		Params:      make(map[string]Param, len(data)),
	}
	if t, ok := nm["type"]; ok && t != nil && n.RawType == "" {
		d.bad(path+".type", "%s.type must be a string, not %s", path, kindOf(t))
	}
	for name, value := range data {
		n.Params[name] = Param{Value: value, Show: true}
	}
	return n
}

// edge reads one edge in the given format.
func (d *decoder) edge(v any, path string, format Format) *Edge {
	em, ok := v.(map[string]any)
	if !ok {
		d.bad(path, "%s must be an object, not %s", path, kindOf(v))
		return nil
	}
	e := &Edge{Source: d.id(em["source"], path+".source"), Target: d.id(em["target"], path+".target")}
	sh, th := em["sourceHandle"], em["targetHandle"]
	if format == FormatLangFlow {
		data := d.object(em["data"], path+".data")
		if h, ok := data["sourceHandle"].(map[string]any); ok {
			e.SourceOutput = str(h["name"])
			if e.Source == "" {
				e.Source = str(h["id"])
			}
			sh = nil
		}
		if h, ok := data["targetHandle"].(map[string]any); ok {
			e.TargetInput = str(h["fieldName"])
			if e.TargetInput == "" {
				// A loop's feedback edge targets the loop's own output
				// handle ("item"), which names no field.
				e.TargetInput = str(h["name"])
			}
			if e.Target == "" {
				e.Target = str(h["id"])
			}
			th = nil
		}
	}
	// Pipe-delimited (2023) handles: "Type|sourceId|Base…" and
	// "ExpectedType|field|targetId". A plain string is a handle name
	// (compact form); anything else (1.x's œ-quoted JSON) is not relied on.
	if s := str(sh); strings.Contains(s, "|") {
		if e.Source == "" {
			e.Source = strings.Split(s, "|")[1]
		}
	} else if plainName(s) {
		e.SourceOutput = s
	}
	if s := str(th); strings.Contains(s, "|") {
		parts := strings.Split(s, "|")
		e.TargetInput = parts[1]
		if e.Target == "" && len(parts) >= 3 {
			e.Target = parts[len(parts)-1]
		}
	} else if plainName(s) {
		e.TargetInput = s
	}
	return e
}

// plainName reports whether a handle string is a bare field name.
func plainName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "{}[]:,\"' œ")
}

// resolve fills the handle names a format leaves out, turns compact-form
// references into edges, and removes duplicate edges.
func resolve(f *Flow) {
	r := resolver{
		f:         f,
		byID:      make(map[string]*Node, len(f.Nodes)),
		connected: map[string]map[string]bool{},
		vars:      map[*Node][]string{},
	}
	for _, n := range f.Nodes {
		if _, dup := r.byID[n.ID]; !dup {
			r.byID[n.ID] = n
		}
	}
	for _, e := range f.Edges {
		if e.TargetInput != "" {
			r.connect(e)
		}
	}

	var refs []*Edge
	if f.Format == FormatCompact {
		refs = r.references()
	}
	refInput := make(map[[2]string]string, len(refs))
	for _, e := range refs {
		k := [2]string{e.Source, e.Target}
		if _, ok := refInput[k]; !ok {
			refInput[k] = e.TargetInput
		}
	}
	for _, e := range f.Edges {
		if e.TargetInput != "" {
			continue
		}
		if in, ok := refInput[[2]string{e.Source, e.Target}]; ok {
			e.TargetInput = in // the edge restates a reference
		} else {
			e.TargetInput = r.inferInput(e)
		}
		r.connect(e)
	}
	f.Edges = append(f.Edges, refs...)
	for _, e := range f.Edges {
		if e.SourceOutput == "" {
			e.SourceOutput = r.inferOutput(e)
		}
		if n := r.byID[e.Source]; n != nil && e.SourceOutput == ToolOutput {
			n.ToolMode = true
		}
	}

	seen := make(map[Edge]bool, len(f.Edges))
	kept := f.Edges[:0]
	for _, e := range f.Edges {
		if !seen[*e] {
			seen[*e] = true
			kept = append(kept, e)
		}
	}
	clear(f.Edges[len(kept):])
	f.Edges = kept
}

type resolver struct {
	f         *Flow
	byID      map[string]*Node
	connected map[string]map[string]bool // node id → inputs with an edge
	vars      map[*Node][]string         // Prompt variables, computed once
}

func (r *resolver) connect(e *Edge) {
	if e.TargetInput == "" {
		return
	}
	m := r.connected[e.Target]
	if m == nil {
		m = map[string]bool{}
		r.connected[e.Target] = m
	}
	m[e.TargetInput] = true
}

// references turns compact-form parameters that name a node on an EdgeOnly
// input into edges, removing the parameters.
func (r *resolver) references() []*Edge {
	var refs []*Edge
	for _, n := range r.f.Nodes {
		c := Lookup(n.Type)
		if c == nil {
			continue
		}
		for _, in := range c.Inputs {
			p, ok := n.Params[in.Name]
			if !ok || !in.EdgeOnly {
				continue
			}
			var ids []string
			switch v := p.Value.(type) {
			case string:
				if v != "" {
					ids = []string{v}
				}
			case []any:
				if !in.List {
					continue
				}
				for _, x := range v {
					s, ok := x.(string)
					if !ok {
						ids = nil
						break
					}
					ids = append(ids, s)
				}
			}
			if len(ids) == 0 {
				continue
			}
			// A value on an edge-only input can only mean a node; one naming
			// no node becomes a dangling edge that Validate reports.
			for _, id := range ids {
				e := &Edge{Source: id, Target: n.ID, TargetInput: in.Name}
				refs = append(refs, e)
				r.connect(e)
			}
			delete(n.Params, in.Name)
		}
	}
	return refs
}

func (r *resolver) promptVars(n *Node) []string {
	v, ok := r.vars[n]
	if !ok {
		v, _ = Variables(n.Params["template"].String())
		r.vars[n] = v
	}
	return v
}

// inferInput picks the target input of an edge whose format did not name
// one; "" when nothing fits.
func (r *resolver) inferInput(e *Edge) string {
	tn, sn := r.byID[e.Target], r.byID[e.Source]
	if tn == nil {
		return ""
	}
	tc := Lookup(tn.Type)
	if tc == nil {
		return ""
	}
	used := r.connected[e.Target]
	if tc.Type == TypePrompt {
		vars := r.promptVars(tn)
		for _, v := range vars {
			if !used[v] && tn.Params[v].Empty() {
				return v
			}
		}
		for _, v := range vars {
			if !used[v] {
				return v
			}
		}
	}
	var outs []Output
	if sn != nil {
		if sc := Lookup(sn.Type); sc != nil {
			for _, o := range outputsOf(sc) {
				if e.SourceOutput == "" || o.Name == e.SourceOutput {
					outs = append(outs, o)
				}
			}
		}
	}
	for _, free := range []bool{true, false} {
		for _, in := range tc.Inputs {
			if !in.Edge || (free && used[in.Name] && !in.List) {
				continue
			}
			if outs == nil {
				return in.Name // unknown source type: first edge input
			}
			for _, t := range in.Types {
				for _, o := range outs {
					if o.Type == t {
						return in.Name
					}
				}
			}
		}
	}
	return ""
}

// inferOutput picks the source output of an edge whose format did not name
// one: the first the target input accepts, else the component's first.
func (r *resolver) inferOutput(e *Edge) string {
	sn := r.byID[e.Source]
	if sn == nil {
		return ""
	}
	sc := Lookup(sn.Type)
	if sc == nil || len(sc.Outputs) == 0 {
		return ""
	}
	types := []string{typeMessage}
	if tn := r.byID[e.Target]; tn != nil {
		if tc := Lookup(tn.Type); tc != nil {
			if in, ok := tc.Input(e.TargetInput); ok && len(in.Types) > 0 {
				types = in.Types
			}
		}
	}
	for _, t := range types {
		for _, o := range outputsOf(sc) {
			if o.Type == t {
				return o.Name
			}
		}
	}
	return sc.Outputs[0].Name
}

// outputsOf is a component's outputs, with ToolOutput last for a tool.
func outputsOf(c *Component) []Output {
	if !c.IsTool {
		return c.Outputs
	}
	return append(c.Outputs[:len(c.Outputs):len(c.Outputs)], Output{Name: ToolOutput, Type: typeTool})
}
