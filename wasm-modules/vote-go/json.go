package main

// A JSON reader for one vote body: RFC 8259, byte for byte, with serde_json's limits
// (a field's value nested at most 128 deep, strings valid UTF-8, no lone surrogates; a
// body that is not an object is only checked for syntax, as serde's IgnoredAny does). No encoding/json: it
// pulls in `os`, whose WASI imports (files, preopens) a vote module may not have.

import (
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

type kind int

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindArray
	kindObject
)

// What a vote needs of a field's value: its kind, and a string's text or a number's
// literal.
type value struct {
	kind kind
	text string
}

type member struct {
	key string
	val value
}

const maxDepth = 128

type reader struct {
	b     []byte
	pos   int
	limit int
}

func (r *reader) fail(what string) error {
	return errors.New(what + " at byte " + strconv.Itoa(r.pos))
}

func (r *reader) space() {
	for r.pos < len(r.b) {
		switch r.b[r.pos] {
		case ' ', '\t', '\n', '\r':
			r.pos++
		default:
			return
		}
	}
}

// parseTop reads the whole body: an object's members in order (duplicates kept), or
// the kind of the value it is instead.
func parseTop(body []byte) ([]member, kind, error) {
	r := &reader{b: body, limit: maxDepth}
	r.space()
	var members []member
	var k kind
	var err error
	if r.pos < len(r.b) && r.b[r.pos] == '{' {
		members, err = r.object(1)
		k = kindObject
	} else {
		r.limit = len(body) + 1
		var v value
		v, err = r.value(1)
		k = v.kind
	}
	if err != nil {
		return nil, k, err
	}
	r.space()
	if r.pos != len(r.b) {
		return nil, k, r.fail("trailing characters")
	}
	return members, k, nil
}

func (r *reader) value(depth int) (value, error) {
	if depth > r.limit {
		return value{}, r.fail("recursion limit exceeded")
	}
	r.space()
	if r.pos >= len(r.b) {
		return value{}, r.fail("EOF while parsing a value")
	}
	switch c := r.b[r.pos]; {
	case c == '{':
		_, err := r.object(depth)
		return value{kind: kindObject}, err
	case c == '[':
		return value{kind: kindArray}, r.array(depth)
	case c == '"':
		s, err := r.str()
		return value{kind: kindString, text: s}, err
	case c == '-' || (c >= '0' && c <= '9'):
		n, err := r.number()
		return value{kind: kindNumber, text: n}, err
	default:
		for _, lit := range []struct {
			word string
			kind kind
		}{{"true", kindBool}, {"false", kindBool}, {"null", kindNull}} {
			if len(r.b)-r.pos >= len(lit.word) && string(r.b[r.pos:r.pos+len(lit.word)]) == lit.word {
				r.pos += len(lit.word)
				return value{kind: lit.kind}, nil
			}
		}
		return value{}, r.fail("expected value")
	}
}

func (r *reader) object(depth int) ([]member, error) {
	if depth > r.limit {
		return nil, r.fail("recursion limit exceeded")
	}
	r.pos++ // '{'
	var members []member
	r.space()
	if r.pos < len(r.b) && r.b[r.pos] == '}' {
		r.pos++
		return members, nil
	}
	for {
		r.space()
		if r.pos >= len(r.b) || r.b[r.pos] != '"' {
			return nil, r.fail("key must be a string")
		}
		key, err := r.str()
		if err != nil {
			return nil, err
		}
		r.space()
		if r.pos >= len(r.b) || r.b[r.pos] != ':' {
			return nil, r.fail("expected ':'")
		}
		r.pos++
		v, err := r.value(depth + 1)
		if err != nil {
			return nil, err
		}
		members = append(members, member{key, v})
		r.space()
		if r.pos >= len(r.b) {
			return nil, r.fail("EOF while parsing an object")
		}
		switch r.b[r.pos] {
		case ',':
			r.pos++
		case '}':
			r.pos++
			return members, nil
		default:
			return nil, r.fail("expected ',' or '}'")
		}
	}
}

func (r *reader) array(depth int) error {
	r.pos++ // '['
	r.space()
	if r.pos < len(r.b) && r.b[r.pos] == ']' {
		r.pos++
		return nil
	}
	for {
		if _, err := r.value(depth + 1); err != nil {
			return err
		}
		r.space()
		if r.pos >= len(r.b) {
			return r.fail("EOF while parsing a list")
		}
		switch r.b[r.pos] {
		case ',':
			r.pos++
		case ']':
			r.pos++
			return nil
		default:
			return r.fail("expected ',' or ']'")
		}
	}
}

func digits(b []byte, pos int) int {
	for pos < len(b) && b[pos] >= '0' && b[pos] <= '9' {
		pos++
	}
	return pos
}

// number returns the literal of a JSON number.
func (r *reader) number() (string, error) {
	start := r.pos
	if r.b[r.pos] == '-' {
		r.pos++
	}
	switch {
	case r.pos < len(r.b) && r.b[r.pos] == '0':
		r.pos++
	case r.pos < len(r.b) && r.b[r.pos] >= '1' && r.b[r.pos] <= '9':
		r.pos = digits(r.b, r.pos)
	default:
		return "", r.fail("invalid number")
	}
	if r.pos < len(r.b) && r.b[r.pos] == '.' {
		end := digits(r.b, r.pos+1)
		if end == r.pos+1 {
			return "", r.fail("invalid number")
		}
		r.pos = end
	}
	if r.pos < len(r.b) && (r.b[r.pos] == 'e' || r.b[r.pos] == 'E') {
		r.pos++
		if r.pos < len(r.b) && (r.b[r.pos] == '+' || r.b[r.pos] == '-') {
			r.pos++
		}
		end := digits(r.b, r.pos)
		if end == r.pos {
			return "", r.fail("invalid number")
		}
		r.pos = end
	}
	return string(r.b[start:r.pos]), nil
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return rune(n), err == nil
}

// str reads a string literal at '"' and returns its text.
func (r *reader) str() (string, error) {
	r.pos++ // '"'
	var out []byte
	for {
		if r.pos >= len(r.b) {
			return "", r.fail("EOF while parsing a string")
		}
		c := r.b[r.pos]
		switch {
		case c == '"':
			r.pos++
			if !utf8.Valid(out) {
				return "", r.fail("invalid unicode code point")
			}
			return string(out), nil
		case c < 0x20:
			return "", r.fail("control character while parsing a string")
		case c != '\\':
			out = append(out, c)
			r.pos++
			continue
		}
		r.pos++
		if r.pos >= len(r.b) {
			return "", r.fail("EOF while parsing a string")
		}
		esc := r.b[r.pos]
		r.pos++
		switch esc {
		case '"', '\\', '/':
			out = append(out, esc)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			u, ok := hex4(r.b[r.pos:])
			if !ok {
				return "", r.fail("invalid escape")
			}
			r.pos += 4
			if utf16.IsSurrogate(u) {
				if u >= 0xdc00 || len(r.b)-r.pos < 6 || r.b[r.pos] != '\\' || r.b[r.pos+1] != 'u' {
					return "", r.fail("lone surrogate in hex escape")
				}
				lo, ok := hex4(r.b[r.pos+2:])
				if !ok || lo < 0xdc00 || lo > 0xdfff {
					return "", r.fail("lone surrogate in hex escape")
				}
				r.pos += 6
				u = utf16.DecodeRune(u, lo)
			}
			out = utf8.AppendRune(out, u)
		default:
			return "", r.fail("invalid escape")
		}
	}
}

// quote writes s as a JSON string, escaping what RFC 8259 requires.
func quote(out []byte, s string) []byte {
	const hexdigits = "0123456789abcdef"
	out = append(out, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c == '\n':
			out = append(out, '\\', 'n')
		case c == '\r':
			out = append(out, '\\', 'r')
		case c == '\t':
			out = append(out, '\\', 't')
		case c < 0x20:
			out = append(out, '\\', 'u', '0', '0', hexdigits[c>>4], hexdigits[c&0xf])
		default:
			out = append(out, c)
		}
	}
	return append(out, '"')
}
