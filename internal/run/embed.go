package run

import (
	"context"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
)

// maxEmbedBatch is the most texts one embeddings call carries (OpenAI's
// limit is 2048); a node's chunk_size may lower it.
const maxEmbedBatch = 1000

// EmbedCall is one embeddings call a node asks for: a batch of texts to
// embed with the model an Embeddings node chose.
type EmbedCall struct {
	// NodeID is the node that embeds (a vector store); ModelNodeID the
	// Embeddings node that chose the model ("" when the model came from a
	// knowledge base or the default).
	NodeID      string   `json:"node_id"`
	ModelNodeID string   `json:"model_node_id"`
	Model       string   `json:"model,omitempty"`
	Dimensions  int      `json:"dimensions,omitempty"`
	Input       []string `json:"input"`
}

// EmbedResult is what an embeddings call did, whether or not it succeeded.
type EmbedResult struct {
	Vectors [][]float32 `json:"vectors"`
	Usage   Usage       `json:"usage"`
	Calls   int         `json:"calls"`
	// Model is the model that answered ("" when none was resolved).
	Model     string `json:"model,omitempty"`
	Simulated bool   `json:"simulated,omitempty"`
}

// EmbedCaller makes a run's governed embeddings calls. *Executor is one; a
// Caller that is not (a sandbox worker's) makes runs that embed fail with
// a clear error.
type EmbedCaller interface {
	Embed(ctx context.Context, job *Job, c EmbedCall) (EmbedResult, error)
}

var _ EmbedCaller = (*Executor)(nil)

// embedRef is an Embeddings handle: the node that configured the model,
// not yet called (LangFlow's Embeddings object).
type embedRef struct {
	node *flow.Node
	// model, when set, is the model itself (a knowledge base's).
	model string
}

// embeddings is OpenAIEmbeddings and EmbeddingModel: each hands its
// configured model, as an Embeddings value, to the vector stores wired to
// it. EmbeddingModel's model may itself be an Embeddings edge, which it
// passes on. Provider keys and base URLs in the node are not used: the
// model table holds them.
func (s *state) embeddings(n *flow.Node) error {
	ref := &embedRef{node: n}
	if v, ok := s.in(n, "model"); ok && v.embed != nil {
		ref = v.embed
	}
	s.setOut(n.ID, "embeddings", value{embed: ref})
	return nil
}

// embedModel is the model name and dimensions an Embeddings handle asks for.
func (s *state) embedModel(ref *embedRef) (string, int, string) {
	if ref.node == nil {
		return ref.model, 0, ""
	}
	dims, _ := s.param(ref.node, "dimensions").Int()
	return s.modelName(ref.node), max(dims, 0), ref.node.ID
}

// embed embeds texts for node n with the Embeddings handle ref, in
// batches of the handle's chunk_size (at most maxEmbedBatch), each one a
// governed call, and accounts for them in the run and the node's trace.
func (s *state) embed(ctx context.Context, n *flow.Node, ref *embedRef, texts []string, t *NodeTrace) ([][]float32, string, error) {
	model, dims, modelNode := s.embedModel(ref)
	batch := maxEmbedBatch
	if ref.node != nil {
		if v, ok := s.param(ref.node, "chunk_size").Int(); ok && v > 0 && v < batch {
			batch = v
		}
	}
	var calls EmbedCaller = s.e
	if s.e.Calls != nil {
		c, ok := s.e.Calls.(EmbedCaller)
		if !ok {
			return nil, "", errs.Field(errs.Unprocessable, "nodes."+n.ID,
				"node %s (%s) embeds text, which runs that execute in a sandbox worker cannot do yet; run the flow without a memory cap", n.ID, n.Type)
		}
		calls = c
	}
	out := make([][]float32, 0, len(texts))
	var served string
	for start := 0; start < len(texts); start += batch {
		if err := ctx.Err(); err != nil {
			return nil, "", ctxError(err)
		}
		c := EmbedCall{NodeID: n.ID, ModelNodeID: modelNode, Model: model, Dimensions: dims, Input: texts[start:min(start+batch, len(texts))]}
		r, err := calls.Embed(ctx, s.job, c)
		s.callCount += r.Calls
		s.usage.Add(r.Usage)
		if r.Simulated {
			s.simulated = true
		}
		if r.Model != "" {
			t.Model, served = r.Model, r.Model
		}
		if err != nil {
			return nil, "", err
		}
		out = append(out, r.Vectors...)
	}
	return out, served, nil
}

// Embed makes one governed embeddings call in this process: the input
// tokens are counted and reserved through the meter (no output), the
// model's deployments are tried in order, and the usage the provider
// reported is settled, on every exit path, as an "embedding" usage event
// of the model.
func (e *Executor) Embed(ctx context.Context, job *Job, c EmbedCall) (EmbedResult, error) {
	var out EmbedResult
	field := "nodes." + c.ModelNodeID + ".model"
	if c.ModelNodeID == "" {
		field = "nodes." + c.NodeID
	}
	m, note, err := e.resolveModel(job, ModelCall{NodeID: c.NodeID, ModelNodeID: c.ModelNodeID, Model: c.Model})
	if err != nil {
		if c.ModelNodeID == "" {
			return out, errs.Field(errs.Unprocessable, field, "node %s: embeddings model %q is not in the model table (configured: %v)", c.NodeID, c.Model, e.Models.Names())
		}
		return out, err
	}
	if !m.CanEmbed() {
		return out, errs.Field(errs.Unprocessable, field,
			"node %s: model %s (%s) serves no embeddings through Sluice; name an OpenAI-compatible or the simulated model", c.NodeID, m.Name(), m.Config().Provider)
	}
	cands, err := e.Models.Route(m.Name(), job.Route)
	if err != nil {
		return out, errs.Field(errs.Forbidden, field, "node %s: model %s runs only on deployments dedicated to other customers", c.NodeID, m.Name())
	}
	kept := cands[:0:0]
	for _, d := range cands {
		if d.CanEmbed() && (d.Name() == m.Name() || job.Allowed == nil || job.Allowed(d.Name())) {
			kept = append(kept, d)
		}
	}
	in := 0
	for _, s := range c.Input {
		in += m.CountText(s)
	}
	var vectors [][]float32
	simulated := false
	gc := gate.Call{Who: job.Who, Kind: "embedding", Model: m, Candidates: kept, InputTokens: max(in, 1), NoOutput: true,
		Field: "nodes." + c.NodeID, Subject: "node " + c.NodeID, RequestID: job.RunID,
		Invoke: func(ctx context.Context, a gate.Attempt) (gate.Outcome, error) {
			r, err := a.Model.Embed(ctx, llm.EmbedRequest{Input: c.Input, Dimensions: c.Dimensions})
			if err == nil {
				a.Started()
				vectors, simulated = r.Vectors, r.Simulated
			}
			return gate.Outcome{Response: llm.Response{Usage: r.Usage, Model: r.Model, Simulated: r.Simulated}}, err
		}}
	g := e.Gate
	if g == nil {
		g = &gate.Gate{Meter: e.Meter, OnModelCall: e.OnModelCall}
	}
	res, err := g.Do(ctx, gc)
	if res.Admitted {
		out.Calls++
		out.Usage = Usage{InputTokens: res.Usage.InputTokens, OutputTokens: res.Usage.OutputTokens,
			GPUMillis: res.Usage.GPUMillis, CostMicros: res.Usage.CostMicros}
	}
	if res.SettleErr != nil {
		e.Log.Error("settling an embeddings call failed", "run_id", job.RunID, "error", res.SettleErr.Error())
	}
	out.Model, out.Simulated = m.Name(), simulated
	if res.Model != nil {
		out.Model = res.Model.Name()
	}
	if note != "" {
		out.Model += " (" + note + ")"
	}
	if err != nil {
		if res.Admitted && ctx.Err() != nil {
			return out, ctxError(ctx.Err())
		}
		return out, err
	}
	if len(vectors) != len(c.Input) {
		return out, errs.E(errs.Unavailable, "node %s: model %s answered %d embeddings for %d texts", c.NodeID, out.Model, len(vectors), len(c.Input))
	}
	out.Vectors = vectors
	return out, nil
}
