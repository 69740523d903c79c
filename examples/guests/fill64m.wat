;; A module whose init fills 64 MiB of linear memory with non-zero bytes:
;; the cold-start benchmark's and tests' stand-in for a runtime that builds
;; a big heap at start-up. `wasmlet snapshot` runs `wizer.initialize` once;
;; `get` reads one byte of the initialized memory (1).
(module
  (memory (export "memory") 1025)
  (func (export "wizer.initialize")
    (local $i i32)
    (loop
      (i64.store (local.get $i) (i64.const 0x0101010101010101))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br_if 0 (i32.lt_u (local.get $i) (i32.const 0x4000000)))))
  (func (export "get") (result i32) (i32.load8_u (i32.const 0x3fffff0)))
  ;; init and then get, for timing a run without a snapshot
  (func (export "init_then_get") (result i32)
    (call 0)
    (call 1)))
