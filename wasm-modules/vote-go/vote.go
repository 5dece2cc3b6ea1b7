package main

// The vote logic of urna-vote (vote/src/parse.rs), in Go: the same checks in the same
// order, the same statuses and fields, against the same ballot (ballot_gen.go, written
// from config/ballot.toml by the Rust crate). The host's record check and the producer
// contract suite hold both modules to it.

import (
	"strconv"
	"strings"
)

const maxBodyBytes = 16 * 1024

var fields = [...]string{"name", "album", "year", "rank"}

type bandEntry struct {
	name   string
	albums []albumEntry
}

type albumEntry struct {
	title string
	year  int64
}

// voteError is a rejection: 413, 400 or 422, naming its field unless field is nil.
type voteError struct {
	status  int
	field   *string
	message string
}

func malformed(field *string, message string) *voteError {
	return &voteError{400, field, message}
}

func invalid(field string, message string) *voteError {
	return &voteError{422, &field, message}
}

func (e *voteError) bodyJSON() []byte {
	out := append([]byte(`{"error":`), quote(nil, e.message)...)
	out = append(out, `,"field":`...)
	if e.field == nil {
		out = append(out, "null"...)
	} else {
		out = quote(out, *e.field)
	}
	return append(out, '}')
}

// A valid vote, with the ballot's spelling.
type vote struct {
	band  *bandEntry
	album *albumEntry
	rank  int64
}

func kindName(k kind) string {
	return [...]string{"null", "a boolean", "a number", "a string", "an array", "an object"}[k]
}

func lookupBand(name string) *bandEntry {
	name = strings.ToLower(strings.TrimSpace(name))
	for i := range ballot {
		if strings.ToLower(ballot[i].name) == name {
			return &ballot[i]
		}
	}
	return nil
}

func (b *bandEntry) lookupAlbum(title string) *albumEntry {
	title = strings.ToLower(strings.TrimSpace(title))
	for i := range b.albums {
		if strings.ToLower(b.albums[i].title) == title {
			return &b.albums[i]
		}
	}
	return nil
}

func textField(m map[string]value, field string) (*string, *voteError) {
	v, ok := m[field]
	if !ok {
		return nil, nil
	}
	if v.kind != kindString {
		return nil, malformed(&field, field+" must be a string, got "+kindName(v.kind))
	}
	return &v.text, nil
}

// The seed sends years and ranks as strings ("1999"); clients may also send numbers.
func integerField(m map[string]value, field string) (*int64, *voteError) {
	v, ok := m[field]
	if !ok {
		return nil, nil
	}
	wrong := func(got string) *voteError {
		return malformed(&field, field+" must be an integer or a string holding one, got "+got)
	}
	switch v.kind {
	case kindNumber:
		n, err := strconv.ParseInt(v.text, 10, 64)
		if err != nil {
			return nil, wrong(v.text)
		}
		return &n, nil
	case kindString:
		n, err := strconv.ParseInt(strings.TrimSpace(v.text), 10, 64)
		if err != nil {
			return nil, wrong(strconv.Quote(v.text))
		}
		return &n, nil
	default:
		return nil, wrong(kindName(v.kind))
	}
}

func parseVote(body []byte) (vote, *voteError) {
	if len(body) > maxBodyBytes {
		return vote{}, &voteError{413, nil, "body is " + strconv.Itoa(len(body)) +
			" bytes; the limit is " + strconv.Itoa(maxBodyBytes) + " bytes"}
	}
	members, k, err := parseTop(body)
	if err != nil {
		return vote{}, malformed(nil, "body is not valid JSON: "+err.Error())
	}
	if k != kindObject {
		return vote{}, malformed(nil, "a vote must be a JSON object, got "+kindName(k))
	}
	// A field given twice is ambiguous (parsers disagree on which value wins).
	m := make(map[string]value, len(members))
	for _, mb := range members {
		if _, twice := m[mb.key]; twice {
			key := mb.key
			return vote{}, malformed(&key, "field "+strconv.Quote(key)+" appears more than once")
		}
		m[mb.key] = mb.val
	}

	// 400s: the fields that are there must have usable types.
	name, e := textField(m, "name")
	if e != nil {
		return vote{}, e
	}
	album, e := textField(m, "album")
	if e != nil {
		return vote{}, e
	}
	year, e := integerField(m, "year")
	if e != nil {
		return vote{}, e
	}
	rank, e := integerField(m, "rank")
	if e != nil {
		return vote{}, e
	}

	// 422s from here on; of several unknown fields, the first in the body.
	for _, mb := range members {
		known := false
		for _, f := range fields {
			known = known || mb.key == f
		}
		if !known {
			return vote{}, invalid(mb.key, "unknown field "+strconv.Quote(mb.key)+
				"; a vote has only name, album, year and rank")
		}
	}
	for i, present := range []bool{name != nil, album != nil, year != nil, rank != nil} {
		if !present {
			return vote{}, invalid(fields[i], fields[i]+" is required")
		}
	}
	band := lookupBand(*name)
	if band == nil {
		return vote{}, invalid("name", strconv.Quote(*name)+" is not on the ballot")
	}
	entry := band.lookupAlbum(*album)
	if entry == nil {
		return vote{}, invalid("album", strconv.Quote(*album)+" is not an album of "+band.name+" on the ballot")
	}
	if *year != entry.year {
		return vote{}, invalid("year", entry.title+" by "+band.name+" is from "+
			strconv.FormatInt(entry.year, 10)+", not "+strconv.FormatInt(*year, 10))
	}
	if *rank < 1 || *rank > 10 {
		return vote{}, invalid("rank", "rank must be between 1 and 10, got "+strconv.FormatInt(*rank, 10))
	}
	return vote{band, entry, *rank}, nil
}
