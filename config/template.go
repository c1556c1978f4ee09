package config

import (
	"fmt"
	"strings"
)

// Template is a set_headers value: literal text with ${client}, ${route}
// and ${request_id} in it. ParseTemplate checks it once; Expand fills it
// in for every request.
type Template struct {
	parts []templatePart
}

type templatePart struct {
	lit string // literal text, when v is ""
	v   string // client | route | request_id
}

// TemplateVars are the names a set_headers value may expand.
var TemplateVars = []string{"client", "route", "request_id"}

// ParseTemplate reads a set_headers value. "$$" writes one "$"; any other
// "$" must start ${client}, ${route} or ${request_id}.
func ParseTemplate(s string) (Template, error) {
	var t Template
	lit := strings.Builder{}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && c != '\t' || c == 0x7f {
			return Template{}, fmt.Errorf("has a control character at byte %d", i)
		}
		if c != '$' {
			lit.WriteByte(c)
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == '$':
			lit.WriteByte('$')
			i++
		case i+1 < len(s) && s[i+1] == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return Template{}, fmt.Errorf("%q: ${ is not closed by }", s)
			}
			name := s[i+2 : i+end]
			if !isTemplateVar(name) {
				return Template{}, fmt.Errorf("%q: unknown variable ${%s}; use ${client}, ${route} or ${request_id} ($$ writes a $)", s, name)
			}
			if lit.Len() > 0 {
				t.parts = append(t.parts, templatePart{lit: lit.String()})
				lit.Reset()
			}
			t.parts = append(t.parts, templatePart{v: name})
			i += end
		default:
			return Template{}, fmt.Errorf("%q: a $ must start ${client}, ${route} or ${request_id} ($$ writes a $)", s)
		}
	}
	if lit.Len() > 0 {
		t.parts = append(t.parts, templatePart{lit: lit.String()})
	}
	return t, nil
}

func isTemplateVar(name string) bool {
	for _, v := range TemplateVars {
		if v == name {
			return true
		}
	}
	return false
}

// Expand writes the template with client, route and request id filled in.
func (t Template) Expand(client, route, requestID string) string {
	if len(t.parts) == 1 && t.parts[0].v == "" {
		return t.parts[0].lit
	}
	var b strings.Builder
	for _, p := range t.parts {
		switch p.v {
		case "":
			b.WriteString(p.lit)
		case "client":
			b.WriteString(client)
		case "route":
			b.WriteString(route)
		case "request_id":
			b.WriteString(requestID)
		}
	}
	return b.String()
}
