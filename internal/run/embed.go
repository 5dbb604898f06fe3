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

// embedSpec is the embeddings model an Embeddings handle asks for, and the
// texts per call (its chunk_size).
func (s *state) embedSpec(ref *embedRef) EmbedSpec {
	if ref.node == nil {
		return EmbedSpec{Model: ref.model}
	}
	spec := EmbedSpec{ModelNodeID: ref.node.ID, Model: s.modelName(ref.node)}
	if v, ok := s.param(ref.node, "dimensions").Int(); ok && v > 0 {
		spec.Dimensions = v
	}
	if v, ok := s.param(ref.node, "chunk_size").Int(); ok && v > 0 {
		spec.Batch = v
	}
	return spec
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
		return out, errs.Field(errs.Unprocessable, field, "node %s: embeddings model %q is not in the model table (configured: %v)", c.NodeID, c.Model, e.Models.Names())
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
