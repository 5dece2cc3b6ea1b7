//go:build wasip1

// The Go vote module: ABI v1 of the urna host as a WASI reactor (`go build
// -buildmode=c-shared`, GOOS=wasip1), the same contract as the Rust vote_module.wasm.
package main

import "unsafe"

// Buffers handed to the host stay reachable until it frees them (Go's collector does
// not move objects, so an address stays valid while the slice lives).
var handedOut = map[int32][]byte{}

func handOut(b []byte) int32 {
	if len(b) == 0 {
		b = make([]byte, 1)
	}
	p := int32(uintptr(unsafe.Pointer(&b[0])))
	handedOut[p] = b
	return p
}

//go:wasmexport urna_abi_version
func urnaAbiVersion() int32 { return abiVersion }

//go:wasmexport urna_alloc
func urnaAlloc(n int32) int32 {
	if n < 0 {
		n = 0
	}
	return handOut(make([]byte, n))
}

//go:wasmexport urna_free
func urnaFree(p, _ int32) { delete(handedOut, p) }

//go:wasmexport urna_handle_vote
func urnaHandleVote(p, n int32, idHi, idLo, acceptedAtMicros int64) int64 {
	// The body is in a buffer urna_alloc handed out: found by its address, bounds-checked.
	body := handedOut[p]
	if n < 0 || int(n) > len(body) {
		n = 0
	}
	body = body[:n]
	out := handle(body, uint64(idHi), uint64(idLo), acceptedAtMicros)
	return int64(uint32(handOut(out)))<<32 | int64(len(out))
}

func main() {}
