package flow_test

import (
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

func TestCatalogLookup(t *testing.T) {
	// Every name the flow formats use, and the canonical type it means.
	names := map[string]string{
		"ChatInput":                "ChatInput",
		"TextInput":                "TextInput",
		"ChatOutput":               "ChatOutput",
		"TextOutput":               "TextOutput",
		"Prompt":                   "Prompt",
		"PromptTemplate":           "Prompt",
		"LanguageModelComponent":   "LanguageModelComponent",
		"LanguageModel":            "LanguageModelComponent",
		"OpenAIModel":              "OpenAIModel",
		"OpenAIModelComponent":     "OpenAIModel",
		"OpenAI":                   "OpenAIModel",
		"ChatOpenAI":               "OpenAIModel",
		"HuggingFaceHub":           "HuggingFaceHub",
		"HuggingFaceModel":         "HuggingFaceHub",
		"OllamaModel":              "OllamaModel",
		"Ollama":                   "OllamaModel",
		"ChatOllama":               "OllamaModel",
		"LLMChain":                 "LLMChain",
		"Memory":                   "Memory",
		"ConversationBufferMemory": "Memory",
		"Agent":                    "Agent",
		"CalculatorComponent":      "CalculatorComponent",
		"Calculator":               "CalculatorComponent",
		"URLComponent":             "URLComponent",
		"URL":                      "URLComponent",
		"APIRequest":               "APIRequest",
		"APIRequestComponent":      "APIRequest",
		"File":                     "File",
		"ParserComponent":          "ParserComponent",
		"parser":                   "ParserComponent",
		"CurrentDate":              "CurrentDate",
		"CurrentDateComponent":     "CurrentDate",
		"SplitText":                "SplitText",
		"SplitTextComponent":       "SplitText",
		"BatchRunComponent":        "BatchRunComponent",
		"CustomComponent":          "CustomComponent",
	}
	for name, want := range names {
		c := flow.Lookup(name)
		if c == nil {
			t.Errorf("Lookup(%q) = nil, want %s", name, want)
			continue
		}
		if c.Type != want {
			t.Errorf("Lookup(%q).Type = %q, want %q", name, c.Type, want)
		}
	}
	for _, name := range []string{"", "noteNode", "note", "chatinput", "Frobnicator"} {
		if c := flow.Lookup(name); c != nil {
			t.Errorf("Lookup(%q) = %s, want nil", name, c.Type)
		}
	}
}

func TestCatalogConsistent(t *testing.T) {
	seen := map[string]string{}
	for key, c := range flow.Components {
		if c.Type != key {
			t.Errorf("Components[%q].Type = %q", key, c.Type)
		}
		for _, name := range append([]string{c.Type}, c.Aliases...) {
			if other, dup := seen[name]; dup {
				t.Errorf("name %q means both %s and %s", name, other, c.Type)
			}
			seen[name] = c.Type
		}
		ins := map[string]bool{}
		for _, in := range c.Inputs {
			if ins[in.Name] {
				t.Errorf("%s: input %q listed twice", c.Type, in.Name)
			}
			ins[in.Name] = true
			if in.EdgeOnly && !in.Edge {
				t.Errorf("%s: input %q is EdgeOnly but takes no edge", c.Type, in.Name)
			}
			if in.Edge && len(in.Types) == 0 {
				t.Errorf("%s: input %q takes edges of no type", c.Type, in.Name)
			}
		}
		outs := map[string]bool{}
		for _, o := range c.Outputs {
			if outs[o.Name] || o.Name == flow.ToolOutput {
				t.Errorf("%s: output %q listed twice or reserved", c.Type, o.Name)
			}
			outs[o.Name] = true
			if o.Type == "" {
				t.Errorf("%s: output %q has no type", c.Type, o.Name)
			}
		}
		if !c.IsCustom && len(c.Outputs) == 0 {
			t.Errorf("%s: no outputs", c.Type)
		}
	}
	flags := map[string]func(*flow.Component) bool{
		"ChatInput":           func(c *flow.Component) bool { return c.IsInput },
		"TextInput":           func(c *flow.Component) bool { return c.IsInput },
		"ChatOutput":          func(c *flow.Component) bool { return c.IsOutput },
		"TextOutput":          func(c *flow.Component) bool { return c.IsOutput },
		"OpenAIModel":         func(c *flow.Component) bool { return c.IsModel },
		"OllamaModel":         func(c *flow.Component) bool { return c.IsModel },
		"HuggingFaceHub":      func(c *flow.Component) bool { return c.IsModel },
		"CalculatorComponent": func(c *flow.Component) bool { return c.IsTool },
		"URLComponent":        func(c *flow.Component) bool { return c.IsTool },
		"APIRequest":          func(c *flow.Component) bool { return c.IsTool },
		"CustomComponent":     func(c *flow.Component) bool { return c.IsCustom },
	}
	for typ, ok := range flags {
		if !ok(flow.Components[typ]) {
			t.Errorf("%s lacks its flag", typ)
		}
	}
	for typ, c := range flow.Components {
		if c.AllowsCycles != (typ == "LoopComponent") {
			t.Errorf("%s: AllowsCycles is %v; only LoopComponent is a loop", typ, c.AllowsCycles)
		}
	}
}
