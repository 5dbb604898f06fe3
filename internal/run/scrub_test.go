package run

import (
	"strings"
	"testing"
)

func TestScrubSecrets(t *testing.T) {
	in := `{"data":{"nodes":[{"id":"m","data":{"type":"OpenAIModel","node":{"template":{
		"api_key":{"value":"sk-live-123456","password":true,"load_from_db":false},
		"openai_api_key":{"value":"OPENAI_API_KEY","password":true,"load_from_db":true},
		"model_name":{"value":"gpt-4o","password":false}}}}}],"edges":[]}}`
	out, err := scrubSecrets([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "sk-live-123456") {
		t.Fatalf("inline secret kept: %s", out)
	}
	if !strings.Contains(string(out), "OPENAI_API_KEY") || !strings.Contains(string(out), "gpt-4o") {
		t.Fatalf("scrubbed more than the inline secret: %s", out)
	}
	same := `{"nodes":[{"id":"a","type":"ChatInput","data":{}}],"edges":[]}`
	if out, _ := scrubSecrets([]byte(same)); string(out) != same {
		t.Fatalf("a flow without secrets changed: %s", out)
	}
}
