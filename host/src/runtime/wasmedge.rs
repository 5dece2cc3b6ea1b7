//! WasmEdge (todo)
