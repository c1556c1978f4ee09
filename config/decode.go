package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// decode reads data into c, walking the YAML tree against the struct so that
// every unknown key and every value of the wrong type is reported with its
// key path, all at once.
func decode(data []byte, c *Config) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return fmt.Errorf("%w: %v", errSyntax, err)
	}
	if root.Kind == 0 { // empty document
		return nil
	}
	var errs []error
	c.zeros = map[string]bool{}
	walk(root.Content[0], reflect.ValueOf(c).Elem(), "", &errs, c)
	return errors.Join(errs...)
}

// errSyntax marks a document that is not YAML at all.
var errSyntax = errors.New("config is not valid YAML")

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// walk decodes n into v; c.zeros collects the key paths written out as 0 (or
// an empty duration, size or string).
func walk(n *yaml.Node, v reflect.Value, path string, errs *[]error, c *Config) {
	fail := func(format string, args ...any) {
		name := path
		if name == "" {
			name = "config"
		}
		*errs = append(*errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Tag == "!!null" {
		// An empty key keeps its default; an empty section (auth:,
		// rate_limit:, cors: with every line under it commented out) is
		// an empty one, so Validate says what it lacks instead of the
		// section silently not being there.
		if v.Kind() == reflect.Pointer && v.IsNil() && v.Type().Elem().Kind() == reflect.Struct {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return
	}
	if reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		if err := v.Addr().Interface().(yaml.Unmarshaler).UnmarshalYAML(n); err != nil {
			fail("%s", err.Error())
			return
		}
		c.zeros[path] = v.IsZero()
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		// A value that fails to decode leaves the pointer nil, so Validate
		// does not report the same key again as empty.
		p, before := v, len(*errs)
		if p.IsNil() {
			p = reflect.New(v.Type().Elem())
		}
		walk(n, p.Elem(), path, errs, c)
		if len(*errs) == before || !v.IsNil() {
			v.Set(p)
		}
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			fail("must be a mapping")
			return
		}
		fields := map[string]int{}
		for i := range v.NumField() {
			tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
			if tag != "" && tag != "-" {
				fields[tag] = i
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			sub := join(path, key)
			idx, ok := fields[key]
			if !ok {
				*errs = append(*errs, fmt.Errorf("%s: unknown key", sub))
				continue
			}
			walk(n.Content[i+1], v.Field(idx), sub, errs, c)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			fail("must be a mapping")
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			val := reflect.New(v.Type().Elem()).Elem()
			walk(n.Content[i+1], val, join(path, key), errs, c)
			m.SetMapIndex(reflect.ValueOf(key), val)
		}
		v.Set(m)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			fail("must be a list")
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			walk(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i), errs, c)
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			fail("must be a %s", kindName(v.Kind()))
			return
		}
		switch v.Kind() {
		case reflect.Int, reflect.Int64, reflect.Int32:
			if n.Tag == "!!float" { // YAML would cut 2.9 to 2
				fail("must be a %s, got %q", kindName(v.Kind()), n.Value)
				return
			}
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			fail("must be a %s, got %q", kindName(v.Kind()), n.Value)
			return
		}
		c.zeros[path] = v.IsZero()
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "whole number"
	case reflect.Float64, reflect.Float32:
		return "number"
	default:
		return k.String()
	}
}
