package run

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
)

// defaultStructuredPrompt is LangFlow's default format instructions.
const defaultStructuredPrompt = "You are an AI that extracts structured JSON objects from unstructured text. " +
	"Use a predefined schema with expected types (str, int, float, bool, dict). " +
	"Extract ALL relevant instances that match the schema - if multiple patterns exist, capture them all. " +
	"Fill missing or ambiguous values with defaults: null for missing values. " +
	"Remove exact duplicates but keep variations that have different field values. " +
	"Always return valid JSON in the expected format, never throw errors. " +
	"If multiple objects can be extracted, return them all in the structured format."

// maxSchemaFields bounds output_schema: a schema is written by hand.
const maxSchemaFields = 100

// schemaField is one row of StructuredOutput's output_schema table.
type schemaField struct {
	name, description string
	// typ is the JSON schema type of one value.
	typ      string
	multiple bool
}

// structuredOutput is LangFlow's StructuredOutputComponent: one governed
// model call asked for JSON of the shape output_schema describes, wrapped
// as LangFlow's pydantic model is ({"objects": [ {field: value, …}, … ]}),
// with the provider's structured-output mode (OpenAI's response_format,
// Ollama's format; an instruction for the others). The answer is checked
// against the schema; its objects become "structured_output" (one object
// as a Data, several as a Data {"results": […]}) and "dataframe_output"
// (one row per object, columns in schema order).
func (s *state) structuredOutput(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	modelNode := n
	for _, in := range []string{"llm", "model"} {
		if v, ok := s.in(n, in); ok && v.model != nil {
			modelNode = v.model.node
			break
		}
	}
	fields, err := s.schemaFields(n)
	if err != nil {
		return err
	}
	name := s.text(n, "schema_name")
	if name == "" {
		name = "OutputModel"
	}
	schema := objectsSchema(name, fields)
	raw, err := json.Marshal(schema)
	if err != nil {
		return fmt.Errorf("node %s: encode schema: %w", n.ID, err)
	}
	strict := true
	for _, f := range fields {
		if f.typ == "object" {
			strict = false // a free-form dict cannot be a closed object
		}
	}
	system := s.text(n, "system_prompt")
	if system == "" {
		system = defaultStructuredPrompt
	}
	msgs := []llm.Message{{Role: llm.RoleSystem, Content: system}, {Role: llm.RoleUser, Content: s.text(n, "input_value")}}
	resp, err := s.completeCall(ctx, modelNode, ModelCall{NodeID: n.ID, Messages: msgs,
		Schema: &llm.ResponseSchema{Name: schemaName(name), Schema: raw, Strict: strict}}, t)
	if err != nil {
		return err
	}
	objects, err := parseObjects(resp.Text, fields)
	if err != nil {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".output_schema",
			"node %s (Structured Output): the model's answer does not match the output schema: %v (answer: %q)", n.ID, err, preview200(resp.Text))
	}
	data := &table{kind: oneData, rows: []row{objects[0]}}
	if len(objects) > 1 {
		list := make([]any, len(objects))
		for i, o := range objects {
			list[i] = rowMap(o)
		}
		data.rows = []row{{{"results", list}}}
	}
	s.setOut(n.ID, "structured_output", dataValue(data))
	df := dataValue(&table{kind: dataFrame, rows: objects})
	s.setOut(n.ID, "dataframe_output", df)
	s.setOut(n.ID, "structured_output_dataframe", df)
	return nil
}

// schemaFields reads output_schema: rows of name, description, type
// (str, int, float, bool, dict; list too) and multiple ("As List").
func (s *state) schemaFields(n *flow.Node) ([]schemaField, error) {
	field := "nodes." + n.ID + ".output_schema"
	rows, _ := s.param(n, "output_schema").Value.([]any)
	if len(rows) == 0 {
		return nil, errs.Field(errs.Unprocessable, field, "node %s (Structured Output): output schema cannot be empty", n.ID)
	}
	if len(rows) > maxSchemaFields {
		return nil, errs.Field(errs.Unprocessable, field, "node %s (Structured Output): output schema has %d fields, more than %d", n.ID, len(rows), maxSchemaFields)
	}
	seen := map[string]bool{}
	out := make([]schemaField, 0, len(rows))
	for i, r := range rows {
		m, ok := r.(map[string]any)
		if !ok {
			return nil, errs.Field(errs.Unprocessable, field, "node %s (Structured Output): row %d of the output schema is not an object", n.ID, i)
		}
		f := schemaField{}
		f.name, _ = m["name"].(string)
		f.description, _ = m["description"].(string)
		if f.name == "" {
			return nil, errs.Field(errs.Unprocessable, field, "node %s (Structured Output): row %d of the output schema has no name", n.ID, i)
		}
		if seen[f.name] {
			return nil, errs.Field(errs.Unprocessable, field, "node %s (Structured Output): the output schema names %q twice", n.ID, f.name)
		}
		seen[f.name] = true
		typ, _ := m["type"].(string)
		switch strings.ToLower(typ) {
		case "", "str", "string", "text":
			f.typ = "string"
		case "int", "integer":
			f.typ = "integer"
		case "float", "number":
			f.typ = "number"
		case "bool", "boolean":
			f.typ = "boolean"
		case "dict", "object", "json":
			f.typ = "object"
		case "list", "array":
			f.typ, f.multiple = "string", true
		default:
			return nil, errs.Field(errs.Unprocessable, field,
				"node %s (Structured Output): field %q has type %q; use str, int, float, bool or dict", n.ID, f.name, typ)
		}
		switch v := m["multiple"].(type) {
		case bool:
			f.multiple = f.multiple || v
		case string:
			f.multiple = f.multiple || strings.EqualFold(v, "true")
		}
		out = append(out, f)
	}
	return out, nil
}

// objectsSchema is the JSON schema of LangFlow's output model: an object
// whose "objects" is a list of the schema's records, every field required
// (OpenAI's strict mode wants every object closed and fully required).
func objectsSchema(name string, fields []schemaField) map[string]any {
	props := map[string]any{}
	required := make([]string, 0, len(fields))
	for _, f := range fields {
		one := map[string]any{"type": f.typ}
		var p map[string]any
		if f.multiple {
			p = map[string]any{"type": "array", "items": one}
		} else {
			p = one
		}
		if f.description != "" {
			p["description"] = f.description
		}
		props[f.name] = p
		required = append(required, f.name)
	}
	item := map[string]any{"type": "object", "properties": props, "required": required, "additionalProperties": false}
	return map[string]any{
		"type":        "object",
		"description": "A list of " + name + ".",
		"properties": map[string]any{
			"objects": map[string]any{"type": "array", "description": "A list of " + name + ".", "items": item},
		},
		"required":             []string{"objects"},
		"additionalProperties": false,
	}
}

var notSchemaName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// schemaName fits a schema name to OpenAI's rule (letters, digits, _ and
// -, at most 64).
func schemaName(s string) string {
	s = notSchemaName.ReplaceAllString(s, "_")
	if len(s) > 64 {
		s = s[:64]
	}
	if s == "" {
		return "OutputModel"
	}
	return s
}

// parseObjects reads a model's structured answer: {"objects": [...]} as
// asked for, or (from models that only followed an instruction) a bare
// list of records or one record, inside a Markdown code fence or not.
// Every record must have every field with a value of its type; fields the
// schema does not name are dropped, as pydantic drops them.
func parseObjects(text string, fields []schemaField) ([]row, error) {
	body := strings.TrimSpace(text)
	if m := codeFence.FindStringSubmatch(body); m != nil {
		body = strings.TrimSpace(m[1])
	}
	if body == "" {
		return nil, fmt.Errorf("the answer is empty")
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(body)))
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("the answer is not JSON: %v", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("the answer has text after its JSON value")
	}
	var items []any
	switch v := v.(type) {
	case map[string]any:
		if objs, ok := v["objects"]; ok {
			list, ok := objs.([]any)
			if !ok {
				return nil, fmt.Errorf(`"objects" is not a list`)
			}
			items = list
		} else {
			items = []any{v}
		}
	case []any:
		items = v
	default:
		return nil, fmt.Errorf("the answer is not a JSON object")
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("no structured output returned (no objects)")
	}
	rows := make([]row, 0, len(items))
	for i, it := range items {
		m, ok := it.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("objects[%d] is not an object", i)
		}
		r := make(row, 0, len(fields))
		for _, f := range fields {
			val, ok := m[f.name]
			if !ok {
				return nil, fmt.Errorf("objects[%d] has no field %q", i, f.name)
			}
			if f.multiple {
				list, ok := val.([]any)
				if !ok {
					return nil, fmt.Errorf("objects[%d].%s is not a list", i, f.name)
				}
				for j, e := range list {
					if !isType(e, f.typ) {
						return nil, fmt.Errorf("objects[%d].%s[%d] is not of type %s", i, f.name, j, f.typ)
					}
				}
			} else if !isType(val, f.typ) {
				return nil, fmt.Errorf("objects[%d].%s is not of type %s", i, f.name, f.typ)
			}
			r = append(r, field{f.name, val})
		}
		rows = append(rows, r)
	}
	return rows, nil
}

var codeFence = regexp.MustCompile("(?s)^```[a-zA-Z]*\\s*\\n(.*?)\\n?```$")

// isType reports whether a decoded JSON value has the schema type typ.
func isType(v any, typ string) bool {
	switch typ {
	case "string":
		_, ok := v.(string)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == math.Trunc(f)
	case "number":
		_, ok := v.(float64)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "object":
		_, ok := v.(map[string]any)
		return ok
	}
	return false
}

// preview200 shortens a model's answer for an error message.
func preview200(s string) string {
	if len(s) <= 200 {
		return s
	}
	return strings.ToValidUTF8(s[:200], "") + "…"
}
