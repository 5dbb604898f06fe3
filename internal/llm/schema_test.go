package llm_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/llm"
)

var personSchema = &llm.ResponseSchema{Name: "Person", Strict: true, Schema: json.RawMessage(`{"type":"object",
	"properties":{"objects":{"type":"array","items":{"type":"object","properties":{
		"name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}},
		"ok":{"type":"boolean"},"kind":{"enum":["a","b"]}},"required":["name","age","tags","ok","kind"],"additionalProperties":false}}},
	"required":["objects"],"additionalProperties":false}`)}

func TestSchemaOnTheWire(t *testing.T) {
	r := ollamaRequest()
	r.Schema = personSchema
	t.Run("openai response_format", func(t *testing.T) {
		up := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
		if _, err := llm.NewOpenAI(up.URL, llm.NewSecret("sk"), nil).Chat(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		rf, _ := up.last(t).Body["response_format"].(map[string]any)
		js, _ := rf["json_schema"].(map[string]any)
		if rf["type"] != "json_schema" || js["name"] != "Person" || js["strict"] != true || js["schema"].(map[string]any)["type"] != "object" {
			t.Errorf("response_format = %v, want json_schema Person, strict, with the schema", rf)
		}
	})
	t.Run("ollama format", func(t *testing.T) {
		up := newUpstream(t, replay(t, 200, "application/json", "ollama/chat.json", nil))
		if _, err := llm.NewOllama(up.URL, llm.Secret{}, nil).Chat(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		if f, _ := up.last(t).Body["format"].(map[string]any); f["required"] == nil {
			t.Errorf("format = %v, want the schema itself", up.last(t).Body["format"])
		}
	})
	t.Run("huggingface instruction", func(t *testing.T) {
		up := newUpstream(t, replay(t, 200, "application/json", "huggingface/generate.json", nil))
		if _, err := llm.NewHuggingFace(up.URL, llm.NewSecret("hf"), nil).Chat(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		in, _ := up.last(t).Body["inputs"].(string)
		if !strings.Contains(in, "conforms to this JSON schema") || !strings.Contains(in, `"additionalProperties":false`) {
			t.Errorf("inputs = %q, want the schema as an instruction", in)
		}
	})
	t.Run("no schema, no field", func(t *testing.T) {
		up := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
		if _, err := llm.NewOpenAI(up.URL, llm.NewSecret("sk"), nil).Chat(context.Background(), ollamaRequest()); err != nil {
			t.Fatal(err)
		}
		if _, ok := up.last(t).Body["response_format"]; ok {
			t.Errorf("response_format sent without a schema")
		}
	})
}

func TestSimulatedFollowsSchema(t *testing.T) {
	r := simRequest("Ada Lovelace, 36, wrote the first program")
	r.Schema = personSchema
	p := llm.NewSimulated(llm.SimulatedOptions{})
	a, err := p.Chat(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := p.Chat(context.Background(), r)
	if a.Text != b.Text {
		t.Errorf("answers differ: %q, %q", a.Text, b.Text)
	}
	var got struct {
		Objects []struct {
			Name string   `json:"name"`
			Age  int      `json:"age"`
			Tags []string `json:"tags"`
			OK   bool     `json:"ok"`
			Kind string   `json:"kind"`
		} `json:"objects"`
	}
	dec := json.NewDecoder(strings.NewReader(a.Text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("answer %q does not decode into the schema: %v", a.Text, err)
	}
	if len(got.Objects) != 1 || got.Objects[0].Name != "Ada Lovelace, 36, wrote the first program" || got.Objects[0].Age != 1 ||
		len(got.Objects[0].Tags) != 1 || !got.Objects[0].OK || got.Objects[0].Kind != "a" {
		t.Errorf("answer = %+v, want one object with every field of its type", got)
	}
	if a.Usage.InputTokens <= 0 || a.Usage.OutputTokens <= 0 {
		t.Errorf("usage = %+v, want tokens counted", a.Usage)
	}
}
