package run

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/vector"
)

// VectorCaller does a run's vector-store work: the governed embeddings
// and the store's reads and writes, always in the collections of the
// job's own tenant and project. *Executor is the in-process one; a sandbox
// worker's asks the server, so that the store, the vectors and the
// provider keys never leave it, and the scope is the server's copy of the
// job, whatever the worker says.
type VectorCaller interface {
	Vector(ctx context.Context, job *Job, c VectorCall) (VectorResult, error)
}

var _ VectorCaller = (*Executor)(nil)

// Vector operations.
const (
	VectorIngest = "ingest" // embed Docs and add them
	VectorSearch = "search" // embed Query and return the K nearest
	VectorList   = "list"   // the first K documents, unscored
	VectorInfo   = "info"   // describe the collection
)

// VectorCall is one piece of vector-store work a node asks for.
type VectorCall struct {
	Op     string `json:"op"`
	NodeID string `json:"node_id"`
	// Collection is the collection's name in the job's project, its
	// namespace included ("faiss/langflow_index").
	Collection string    `json:"collection"`
	Embed      EmbedSpec `json:"embed"`
	// Docs are an ingest's documents; Replace empties the collection
	// first, SkipDuplicates drops the documents it holds.
	Docs           []VectorDoc `json:"docs,omitempty"`
	Replace        bool        `json:"replace,omitempty"`
	SkipDuplicates bool        `json:"skip_duplicates,omitempty"`
	// Query and K are a search's; WithVectors returns the hits' vectors.
	Query       string `json:"query,omitempty"`
	K           int    `json:"k,omitempty"`
	WithVectors bool   `json:"with_vectors,omitempty"`
}

// EmbedSpec is the embeddings model of a call: the one an Embeddings node
// chose (ModelNodeID), or a knowledge base's (Model alone).
type EmbedSpec struct {
	ModelNodeID string `json:"model_node_id,omitempty"`
	Model       string `json:"model,omitempty"`
	Dimensions  int    `json:"dimensions,omitempty"`
	// Batch is how many texts one embeddings call carries (0:
	// maxEmbedBatch).
	Batch int `json:"batch,omitempty"`
}

// VectorDoc is a document to store: its text and its other fields (a
// JSON list of [name, value] pairs).
type VectorDoc struct {
	Text string          `json:"text"`
	Meta json.RawMessage `json:"meta,omitempty"`
}

// VectorHit is a document found.
type VectorHit struct {
	Text   string          `json:"text"`
	Meta   json.RawMessage `json:"meta,omitempty"`
	Score  float64         `json:"score"`
	Vector []float32       `json:"vector,omitempty"`
}

// VectorResult is what a VectorCall did, whether or not it succeeded.
type VectorResult struct {
	Added int         `json:"added,omitempty"`
	Hits  []VectorHit `json:"hits,omitempty"`
	Info  vector.Info `json:"info"`
	// Usage, Calls, Model and Simulated are the embeddings calls'.
	Usage     Usage  `json:"usage"`
	Calls     int    `json:"calls,omitempty"`
	Model     string `json:"model,omitempty"`
	Simulated bool   `json:"simulated,omitempty"`
}

// Vector does c in this process: embeddings through Embed (governed,
// metered), the store in e.Vectors, scoped to job.Who's tenant and
// project.
func (e *Executor) Vector(ctx context.Context, job *Job, c VectorCall) (VectorResult, error) {
	var out VectorResult
	if e.Vectors == nil {
		return out, errs.E(errs.Unprocessable, "node %s: no vector store is configured on this server", c.NodeID)
	}
	key := vector.Key{TenantID: job.Who.TenantID, ProjectID: job.Who.ProjectID, Collection: c.Collection}
	switch c.Op {
	case VectorInfo:
		info, err := e.Vectors.Info(ctx, key)
		out.Info = info
		return out, err
	case VectorIngest:
		if max := e.Vectors.Limits().MaxPerCollection; len(c.Docs) > max {
			return out, &errs.Error{Code: errs.Unprocessable, Err: vector.ErrFull,
				Message: fmt.Sprintf("%d documents to ingest; a collection holds at most %d (vectors.max_per_collection)", len(c.Docs), max)}
		}
		docs := make([]vector.Doc, len(c.Docs))
		texts := make([]string, len(c.Docs))
		for i, d := range c.Docs {
			docs[i] = vector.Doc{Text: d.Text, Meta: d.Meta}
			texts[i] = d.Text
		}
		var model string
		if len(texts) > 0 {
			vecs, err := e.embedAll(ctx, job, c, texts, &out)
			if err != nil {
				return out, err
			}
			for i := range docs {
				docs[i].Vector = vecs[i]
			}
			model = baseModel(out.Model)
		}
		n, err := e.Vectors.Add(ctx, key, model, docs, vector.AddOptions{Replace: c.Replace, SkipDuplicates: c.SkipDuplicates})
		out.Added = n
		return out, err
	case VectorSearch, VectorList:
		if c.K < 1 {
			return out, errs.E(errs.Unprocessable, "node %s: a search returns at least 1 result, not %d", c.NodeID, c.K)
		}
		var q []float32
		if c.Op == VectorSearch {
			vecs, err := e.embedAll(ctx, job, c, []string{c.Query}, &out)
			if err != nil {
				return out, err
			}
			q = vecs[0]
		} else {
			info, err := e.Vectors.Info(ctx, key)
			if err != nil {
				return out, err
			}
			// A zero vector scores every document 0: the first K, in order.
			q = make([]float32, info.Dimensions)
		}
		hits, err := e.Vectors.Search(ctx, key, q, c.K)
		if err != nil {
			return out, err
		}
		for _, h := range hits {
			vh := VectorHit{Text: h.Text, Meta: h.Meta, Score: h.Score}
			if c.WithVectors {
				vh.Vector = h.Vector
			}
			out.Hits = append(out.Hits, vh)
		}
		return out, nil
	}
	return out, errs.E(errs.Invalid, "node %s: unknown vector operation %q", c.NodeID, c.Op)
}

// embedAll embeds texts in batches, each a governed call, adding what
// they used to out.
func (e *Executor) embedAll(ctx context.Context, job *Job, c VectorCall, texts []string, out *VectorResult) ([][]float32, error) {
	batch := maxEmbedBatch
	if b := c.Embed.Batch; b > 0 && b < batch {
		batch = b
	}
	vecs := make([][]float32, 0, len(texts))
	for start := 0; start < len(texts); start += batch {
		if err := ctx.Err(); err != nil {
			return nil, ctxError(err)
		}
		r, err := e.Embed(ctx, job, EmbedCall{NodeID: c.NodeID, ModelNodeID: c.Embed.ModelNodeID, Model: c.Embed.Model,
			Dimensions: c.Embed.Dimensions, Input: texts[start:min(start+batch, len(texts))]})
		out.Calls += r.Calls
		out.Usage.Add(r.Usage)
		out.Simulated = out.Simulated || r.Simulated
		if r.Model != "" {
			out.Model = r.Model
		}
		if err != nil {
			return nil, err
		}
		vecs = append(vecs, r.Vectors...)
	}
	return vecs, nil
}

// vectorCaller is the run's VectorCaller, or an error naming the node
// when the run has none (a sandbox worker without one, an executor built
// without a store).
func (s *state) vectorCaller(n *flow.Node, field string) (VectorCaller, error) {
	if s.e.Calls != nil {
		if vc, ok := s.e.Calls.(VectorCaller); ok {
			return vc, nil
		}
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+field,
			"node %s (%s) needs the vector store, which runs that execute in this sandbox worker cannot use", n.ID, n.Type)
	}
	if s.e.Vectors == nil {
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+field, "node %s (%s): no vector store is configured on this server", n.ID, n.Type)
	}
	return s.e, nil
}

// vectors does c for node n and accounts for its embeddings in the run
// and the node's trace; a refusal names the node's field.
func (s *state) vectors(ctx context.Context, n *flow.Node, field string, c VectorCall, t *NodeTrace) (VectorResult, error) {
	vc, err := s.vectorCaller(n, field)
	if err != nil {
		return VectorResult{}, err
	}
	c.NodeID = n.ID
	r, err := vc.Vector(ctx, s.job, c)
	s.callCount += r.Calls
	s.usage.Add(r.Usage)
	if r.Simulated {
		s.simulated = true
	}
	if r.Model != "" {
		t.Model = r.Model
	}
	if err != nil {
		return r, vectorError(n, field, err)
	}
	return r, nil
}
