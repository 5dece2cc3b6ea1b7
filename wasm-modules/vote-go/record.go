package main

// The ABI v1 result of one vote (wasm-modules/vote-module/src/lib.rs): [0] ++ protobuf
// VoteRecord (protos/urna/v1/vote.proto) when accepted, [1, status hi, status lo] ++ the
// JSON error body when rejected.

const (
	abiVersion  = 1
	tagAccepted = 0
	tagRejected = 1
	sourceWasm  = 2
)

func varint(out []byte, v uint64) []byte {
	for v >= 0x80 {
		out = append(out, byte(v)|0x80)
		v >>= 7
	}
	return append(out, byte(v))
}

func stringField(out []byte, number uint64, s string) []byte {
	if s == "" {
		return out
	}
	out = varint(out, number<<3|2)
	out = varint(out, uint64(len(s)))
	return append(out, s...)
}

func varintField(out []byte, number uint64, v uint64) []byte {
	if v == 0 {
		return out
	}
	return varint(varint(out, number<<3), v)
}

// uuidText is the canonical hyphenated form of the UUID hi << 64 | lo.
func uuidText(hi, lo uint64) string {
	const hexdigits = "0123456789abcdef"
	var out [36]byte
	j := 0
	for i := 0; i < 32; i++ {
		if i == 8 || i == 12 || i == 16 || i == 20 {
			out[j] = '-'
			j++
		}
		word, shift := hi, uint(60-4*i)
		if i >= 16 {
			word, shift = lo, uint(60-4*(i-16))
		}
		out[j] = hexdigits[(word>>shift)&0xf]
		j++
	}
	return string(out[:])
}

// handle is the whole per-request work, testable natively.
func handle(body []byte, idHi, idLo uint64, acceptedAtMicros int64) []byte {
	v, err := parseVote(body)
	if err != nil {
		out := []byte{tagRejected, byte(err.status >> 8), byte(err.status)}
		return append(out, err.bodyJSON()...)
	}
	out := []byte{tagAccepted}
	out = stringField(out, 1, uuidText(idHi, idLo))
	out = stringField(out, 2, v.band.name)
	out = stringField(out, 3, v.album.title)
	out = varintField(out, 4, uint64(v.album.year))
	out = varintField(out, 5, uint64(v.rank))
	out = varintField(out, 6, sourceWasm)
	out = varintField(out, 7, uint64(acceptedAtMicros))
	out = stringField(out, 8, ballotVersion)
	return out
}
