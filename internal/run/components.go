package run

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
)

// nodeRunner runs one component type as a node: it reads the node's
// inputs and sets its outputs.
type nodeRunner func(s *state, ctx context.Context, n *flow.Node, t *NodeTrace) error

// runners implement every component the catalog (flow.Components)
// declares, by canonical type: with toolBuilders, the executor's side of
// the one registry. TestOneComponentRegistry keeps the three in step: a
// type declared without an implementation, or implemented without a
// declaration, fails it. Every runner may run in a sandbox worker: the
// work that needs the server's keys or stores (model calls, search, MCP,
// files, vectors, messages) asks the server from there.
var runners = map[string]nodeRunner{
	"ChatInput":              func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.input(ctx, n) },
	"TextInput":              func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.input(ctx, n) },
	"ChatOutput":             func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.output(ctx, n) },
	"TextOutput":             func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.output(ctx, n) },
	flow.TypePrompt:          func(s *state, _ context.Context, n *flow.Node, _ *NodeTrace) error { return s.prompt(n) },
	"LanguageModelComponent": (*state).model,
	"OpenAIModel":            (*state).model,
	"HuggingFaceHub":         (*state).model,
	"OllamaModel":            (*state).model,
	flow.TypeLLMChain:        (*state).chain,
	"Memory":                 func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.memory(ctx, n) },
	flow.TypeAgent:           (*state).agent,
	"CalculatorComponent":    (*state).toolAsNode,
	"URLComponent":           (*state).toolAsNode,
	"APIRequest":             (*state).toolAsNode,
	"TavilySearchComponent":  func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.search(ctx, n) },
	"SearchComponent":        func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.search(ctx, n) },
	"ArXivComponent":         func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.search(ctx, n) },
	TypeMCPTools:             func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.mcpNode(ctx, n) },
	"ParserComponent":        func(s *state, _ context.Context, n *flow.Node, _ *NodeTrace) error { return s.parser(n) },
	"BatchRunComponent":      (*state).batchRun,
	"LoopComponent": func(_ *state, _ context.Context, n *flow.Node, _ *NodeTrace) error {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID, "node %s (Loop) runs only with its body", n.ID) // see runNode
	},
	"StructuredOutput":   (*state).structuredOutput,
	"SplitText":          func(s *state, _ context.Context, n *flow.Node, _ *NodeTrace) error { return s.splitText(n) },
	"CurrentDate":        func(s *state, _ context.Context, n *flow.Node, _ *NodeTrace) error { return s.currentDate(n) },
	"OpenAIEmbeddings":   func(s *state, _ context.Context, n *flow.Node, _ *NodeTrace) error { return s.embeddings(n) },
	"EmbeddingModel":     func(s *state, _ context.Context, n *flow.Node, _ *NodeTrace) error { return s.embeddings(n) },
	"FAISS":              (*state).vectorStore,
	"Chroma":             (*state).vectorStore,
	"KnowledgeIngestion": (*state).knowledgeIngestion,
	"KnowledgeBase":      (*state).knowledgeRetrieval,
	"File":               func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.readFile(ctx, n) },
	"SaveToFile":         func(s *state, ctx context.Context, n *flow.Node, _ *NodeTrace) error { return s.saveToFile(ctx, n) },
}

// toolAsNode runs a tool component as an ordinary node: its tool with the
// node's own fields as arguments, the answer on every output.
func (s *state) toolAsNode(ctx context.Context, n *flow.Node, _ *NodeTrace) error {
	res, err := s.toolFor(n).run(ctx, s.toolArgs(n))
	if err != nil {
		return err
	}
	for _, o := range n.Component().Outputs {
		s.setOut(n.ID, o.Name, value{text: res})
	}
	return nil
}

// exec runs one node: it reads the node's inputs and sets its outputs.
func (s *state) exec(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	if r, ok := runners[n.Type]; ok {
		return r(s, ctx, n, t)
	}
	if f, ok := s.e.Components[n.Type]; ok {
		text, err := f(ctx, n, func(name string) flow.Param { return s.param(n, name) }, s.text(n, "input_value"))
		if err != nil {
			return err
		}
		outs := []string{"text"}
		if c := n.Component(); c != nil && len(c.Outputs) > 0 {
			outs = outs[:0]
			for _, o := range c.Outputs {
				outs = append(outs, o.Name)
			}
		}
		for _, o := range outs {
			s.setOut(n.ID, o, value{text: text})
		}
		return nil
	}
	return errs.Field(errs.Unprocessable, "nodes."+n.ID, "node %s: component %s has no implementation", n.ID, n.Type)
}

// input is ChatInput and TextInput: the run's input value, for the input
// type the caller named, or the node's own value.
func (s *state) input(ctx context.Context, n *flow.Node) error {
	text := s.text(n, "input_value")
	kind := "chat"
	if n.Type == "TextInput" {
		kind = "text"
	}
	if it := s.job.InputType; (it == "" && kind == "chat") || it == kind || it == "any" {
		if s.job.InputValue != "" || it != "" {
			text = s.job.InputValue
		}
	}
	out := "text"
	if n.Type == "ChatInput" {
		out = "message"
		sender, name := s.param(n, "sender").String(), s.param(n, "sender_name").String()
		if sender == "" {
			sender = "User"
		}
		if name == "" {
			name = "User"
		}
		m := s.newMessage(n, sender, name, text)
		if err := s.store(ctx, n, m); err != nil {
			return err
		}
		s.setOut(n.ID, out, value{text: text, message: m})
		return nil
	}
	s.setOut(n.ID, out, value{text: text})
	return nil
}

// output is ChatOutput and TextOutput. TextOutput, like LangFlow's, says
// its own input_value when no edge brings one.
func (s *state) output(ctx context.Context, n *flow.Node) error {
	text := joinTexts(s.inputs[n.ID]["input_value"])
	if n.Type == "TextOutput" {
		if len(s.inputs[n.ID]["input_value"]) == 0 {
			text = s.param(n, "input_value").String()
		}
		s.setOut(n.ID, "text", value{text: text})
		return nil
	}
	sender, name := s.param(n, "sender").String(), s.param(n, "sender_name").String()
	if sender == "" {
		sender = "Machine"
	}
	if name == "" {
		name = "AI"
	}
	m := s.newMessage(n, sender, name, text)
	for _, e := range s.f.Incoming(n.ID) {
		if id := s.streamIDs[e.Source]; id != "" && e.TargetInput == "input_value" {
			m.ID = id // the message the tokens streamed under, now complete
		}
	}
	if err := s.store(ctx, n, m); err != nil {
		return err
	}
	s.setOut(n.ID, "message", value{text: text, message: m})
	return nil
}

// promptVars binds a Prompt's variables from edges and parameters.
func (s *state) promptVars(n *flow.Node) (string, map[string]string, []string, error) {
	tmpl := s.param(n, "template").String()
	names, err := flow.Variables(tmpl)
	if err != nil {
		return "", nil, nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+".template", "node %s: %v", n.ID, err)
	}
	vars := map[string]string{}
	var free []string
	for _, v := range names {
		if vs := s.inputs[n.ID][v]; len(vs) > 0 {
			vars[v] = joinTexts(vs)
		} else if p := s.param(n, v); !p.Empty() {
			vars[v] = p.String()
		} else {
			free = append(free, v)
		}
	}
	return tmpl, vars, free, nil
}

// prompt renders a Prompt. Its "template" output hands the template, with
// what it bound, to a chain that fills the rest from the run's input.
func (s *state) prompt(n *flow.Node) error {
	tmpl, vars, free, err := s.promptVars(n)
	if err != nil {
		return err
	}
	s.setOut(n.ID, "template", value{template: &templated{template: tmpl, vars: vars}})
	if len(free) > 0 {
		for _, e := range s.f.Outgoing(n.ID) {
			if e.SourceOutput == "prompt" {
				return errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+free[0], "node %s: prompt variable {%s} has no value", n.ID, free[0])
			}
		}
		return nil
	}
	text, err := flow.Render(tmpl, vars)
	if err != nil {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".template", "node %s: %v", n.ID, err)
	}
	s.setOut(n.ID, "prompt", value{text: text})
	return nil
}

// model is a language-model component: it hands itself to consumers of
// model_output and, if anything reads text_output, calls the model.
func (s *state) model(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	s.setOut(n.ID, "model_output", value{model: &modelRef{node: n}})
	needText := false
	for _, e := range s.f.Outgoing(n.ID) {
		if e.SourceOutput != "model_output" {
			needText = true
		}
	}
	if !needText && len(s.f.Outgoing(n.ID)) > 0 {
		return nil
	}
	var msgs []llm.Message
	if sys := s.text(n, "system_message"); sys != "" {
		msgs = append(msgs, llm.Message{Role: llm.RoleSystem, Content: sys})
	}
	msgs = append(msgs, llm.Message{Role: llm.RoleUser, Content: s.text(n, "input_value")})
	resp, err := s.complete(ctx, n, n, msgs, nil, t)
	if err != nil {
		return err
	}
	s.setOut(n.ID, "text_output", value{text: resp.Text})
	return nil
}

// chain is the legacy LLMChain: render the prompt template, filling its
// free variables from the run's input, and call the chain's model.
func (s *state) chain(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	pv, ok := s.in(n, "prompt")
	if !ok {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".prompt", "node %s: no prompt connected", n.ID)
	}
	mv, ok := s.in(n, "llm")
	if !ok || mv.model == nil {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".llm", "node %s: no model connected", n.ID)
	}
	text := pv.text
	if pv.template != nil {
		vars := map[string]string{}
		for k, v := range pv.template.vars {
			vars[k] = v
		}
		names, err := flow.Variables(pv.template.template)
		if err != nil {
			return err
		}
		input := s.job.InputValue
		if v, ok := s.in(n, "input_value"); ok {
			input = v.text
		}
		for _, name := range names {
			if _, bound := vars[name]; !bound {
				if tw := s.param(n, name); !tw.Empty() {
					vars[name] = tw.String()
				} else {
					vars[name] = input
				}
			}
		}
		text, err = flow.Render(pv.template.template, vars)
		if err != nil {
			return errs.Field(errs.Unprocessable, "nodes."+n.ID+".prompt", "node %s: %v", n.ID, err)
		}
	}
	if mem, ok := s.in(n, "memory"); ok && mem.text != "" {
		text = mem.text + "\n" + text
	}
	resp, err := s.complete(ctx, n, mv.model.node, []llm.Message{{Role: llm.RoleUser, Content: text}}, nil, t)
	if err != nil {
		return err
	}
	s.setOut(n.ID, "text", value{text: resp.Text})
	return nil
}

// memory reads the session's history (messages of earlier runs).
func (s *state) memory(ctx context.Context, n *flow.Node) error {
	limit := 100
	if v, ok := s.param(n, "n_messages").Int(); ok && v > 0 {
		limit = min(v, 1000)
	}
	var msgs []*Message
	if s.e.Messages != nil && s.job.SessionID != "" {
		all, err := s.e.Messages.Messages(ctx, s.job.Who.TenantID, s.job.Who.UserID, s.job.SessionID, limit+len(s.msgs))
		if err != nil {
			return err
		}
		for _, m := range all {
			if m.RunID != s.job.RunID {
				msgs = append(msgs, m)
			}
		}
		if len(msgs) > limit {
			msgs = msgs[len(msgs)-limit:]
		}
	}
	sender := s.param(n, "sender").String()
	var kept []*Message
	for _, m := range msgs {
		if sender == "" || strings.Contains(sender, m.Sender) {
			kept = append(kept, m)
		}
	}
	if s.param(n, "order").String() == "Descending" {
		slices.Reverse(kept)
	}
	tmpl := s.param(n, "template").String()
	if tmpl == "" {
		tmpl = "{sender_name}: {text}"
	}
	lines := make([]string, 0, len(kept))
	for _, m := range kept {
		line, err := flow.Render(tmpl, map[string]string{"sender_name": m.SenderName, "text": m.Text, "sender": m.Sender, "session_id": m.SessionID})
		if err != nil {
			line = fmt.Sprintf("%s: %s", m.SenderName, m.Text)
		}
		lines = append(lines, line)
	}
	text := strings.Join(lines, "\n")
	s.setOut(n.ID, "messages_text", value{text: text})
	s.setOut(n.ID, "memory", value{text: text})
	// As Data and a DataFrame, the history is one row per message, for a
	// Parser or SplitText to read field by field.
	rows := make([]row, len(kept))
	for i, m := range kept {
		rows[i] = messageRow(m)
	}
	s.setOut(n.ID, "messages", dataValue(&table{kind: dataList, rows: rows}))
	s.setOut(n.ID, "dataframe", dataValue(&table{kind: dataFrame, rows: rows}))
	return nil
}
