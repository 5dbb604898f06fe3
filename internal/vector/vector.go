// Package vector owns Sluice's local vector store: collections of embedded
// documents kept per tenant and project, searched by cosine similarity
// (brute force: collections are bounded), so that the flow runtime's FAISS,
// Chroma and Knowledge components run without an external service. It
// defines the Store the runtime uses, the bounds every store enforces, and
// Memory, the in-process store used when vectors are not persisted; the SQL
// store persists them (internal/sqlstore). Nothing here embeds text: the
// runtime embeds through the governed call and hands vectors in.
package vector

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/sluicehq/sluice/internal/errs"
)

// Defaults of Limits.
const (
	DefaultMaxPerCollection = 10_000
	DefaultMaxCollections   = 100
	DefaultMaxDimensions    = 4096
)

// Limits bound what a store keeps.
type Limits struct {
	// MaxPerCollection is the most documents one collection holds.
	MaxPerCollection int
	// MaxCollections is the most collections one project holds.
	MaxCollections int
	// MaxDimensions is the longest vector accepted.
	MaxDimensions int
}

// WithDefaults fills the zero fields with the defaults.
func (l Limits) WithDefaults() Limits {
	if l.MaxPerCollection <= 0 {
		l.MaxPerCollection = DefaultMaxPerCollection
	}
	if l.MaxCollections <= 0 {
		l.MaxCollections = DefaultMaxCollections
	}
	if l.MaxDimensions <= 0 {
		l.MaxDimensions = DefaultMaxDimensions
	}
	return l
}

// Key names one collection: a tenant's project's collection. Nothing is
// ever shared across tenants or projects.
type Key struct {
	TenantID, ProjectID, Collection string
}

func (k Key) String() string { return fmt.Sprintf("collection %q", k.Collection) }

// Doc is one embedded document.
type Doc struct {
	Text string
	// Meta is the document's other fields, opaque to the store.
	Meta   json.RawMessage
	Vector []float32
}

// Hash identifies a document's content (text and fields): how duplicates
// are recognised.
func (d Doc) Hash() string {
	h := sha256.New()
	_, _ = h.Write([]byte(d.Text))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write(d.Meta)
	return hex.EncodeToString(h.Sum(nil))
}

// Hit is a document found by a search, with its cosine similarity to the
// query.
type Hit struct {
	Doc
	Score float64
}

// Info describes a collection. A collection that does not exist has Count 0.
type Info struct {
	// Model is the embeddings model its vectors came from, and Dimensions
	// their length: a query must be embedded the same way.
	Model      string
	Dimensions int
	Count      int
}

// AddOptions say how documents join a collection.
type AddOptions struct {
	// Replace empties the collection first (FAISS rebuilds its index from
	// what it ingests).
	Replace bool
	// SkipDuplicates drops documents whose content the collection (or the
	// batch) already has.
	SkipDuplicates bool
}

// Store keeps collections. Implementations enforce Limits and the
// model/dimension consistency of a collection (Check).
type Store interface {
	// Add puts docs, embedded by model, into the collection, all or none,
	// and returns how many were added.
	Add(ctx context.Context, k Key, model string, docs []Doc, opt AddOptions) (int, error)
	// Search returns the k documents nearest to q, nearest first.
	Search(ctx context.Context, k Key, q []float32, n int) ([]Hit, error)
	// Info describes the collection.
	Info(ctx context.Context, k Key) (Info, error)
	// Limits are the bounds the store enforces, so that a caller can
	// refuse work (embeddings, which cost tokens) that Add would refuse.
	Limits() Limits
}

// ErrFull is the cause of a refusal for a collection or project at its
// bound; ErrMismatch of one for vectors unlike the collection's.
var (
	ErrFull     = errors.New("vector store full")
	ErrMismatch = errors.New("vectors do not match the collection")
)

// Check validates an Add against the collection as it is (info, with
// Count the documents that stay) and the limits; added is how many
// documents the Add brings.
func Check(l Limits, k Key, info Info, model string, docs []Doc, added int) error {
	dims := 0
	for i, d := range docs {
		if len(d.Vector) == 0 {
			return &errs.Error{Code: errs.Unprocessable, Err: ErrMismatch,
				Message: fmt.Sprintf("document %d of %s has an empty vector", i, k)}
		}
		if dims == 0 {
			dims = len(d.Vector)
		}
		if len(d.Vector) != dims {
			return &errs.Error{Code: errs.Unprocessable, Err: ErrMismatch,
				Message: fmt.Sprintf("%s: vectors of %d and %d dimensions in one batch", k, dims, len(d.Vector))}
		}
	}
	if dims > l.MaxDimensions {
		return &errs.Error{Code: errs.Unprocessable, Err: ErrMismatch,
			Message: fmt.Sprintf("%s: vectors of %d dimensions are longer than the store's limit of %d", k, dims, l.MaxDimensions)}
	}
	if info.Count > 0 && dims > 0 {
		if info.Model != model || info.Dimensions != dims {
			return &errs.Error{Code: errs.Unprocessable, Err: ErrMismatch,
				Message: fmt.Sprintf("%s holds vectors of model %s (%d dimensions); these are of model %s (%d dimensions): use the same embeddings model, or a new collection",
					k, info.Model, info.Dimensions, model, dims)}
		}
	}
	if info.Count+added > l.MaxPerCollection {
		return &errs.Error{Code: errs.Unprocessable, Err: ErrFull,
			Message: fmt.Sprintf("%s would hold %d documents; the limit is %d per collection (vectors.max_per_collection)",
				k, info.Count+added, l.MaxPerCollection)}
	}
	return nil
}

// CheckQuery validates a search vector against the collection.
func CheckQuery(k Key, info Info, q []float32) error {
	if info.Count > 0 && len(q) != info.Dimensions {
		return &errs.Error{Code: errs.Unprocessable, Err: ErrMismatch,
			Message: fmt.Sprintf("%s holds vectors of %d dimensions (model %s); the query's has %d: search with the model the collection was built with",
				k, info.Dimensions, info.Model, len(q))}
	}
	return nil
}

// FullProject is the refusal of a new collection in a project that has
// MaxCollections.
func FullProject(l Limits, k Key) error {
	return &errs.Error{Code: errs.Unprocessable, Err: ErrFull,
		Message: fmt.Sprintf("the project already has %d vector collections, the limit (vectors.max_collections); cannot create %s", l.MaxCollections, k)}
}

// Cosine is the cosine similarity of a and b (0 when either is zero).
func Cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range min(len(a), len(b)) {
		x, y := float64(a[i]), float64(b[i])
		dot += x * y
		na += x * x
		nb += y * y
	}
	if na == 0 || nb == 0 {
		return 0
	}
	return dot / math.Sqrt(na*nb)
}

// Rank returns the n documents of docs nearest to q, nearest first; equal
// scores keep the documents' order.
func Rank(docs []Doc, q []float32, n int) []Hit {
	hits := make([]Hit, len(docs))
	for i, d := range docs {
		hits[i] = Hit{Doc: d, Score: Cosine(d.Vector, q)}
	}
	sort.SliceStable(hits, func(i, j int) bool { return hits[i].Score > hits[j].Score })
	if n < len(hits) {
		hits = hits[:max(n, 0)]
	}
	return hits
}

// EncodeVector is a vector as base64 of little-endian float32s: how stores
// that keep text keep vectors.
func EncodeVector(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}

// DecodeVector reverses EncodeVector.
func DecodeVector(s string) ([]float32, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		return nil, fmt.Errorf("decode vector: not base64 of float32s")
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}
