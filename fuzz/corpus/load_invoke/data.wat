(module (memory 1) (data (i32.const 0) "hello") (func (export "get") (result i32) (i32.load8_u (i32.const 0))))
