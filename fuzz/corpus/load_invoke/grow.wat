(module (memory 1) (func (export "grow") (loop (drop (memory.grow (i32.const 100))) (br 0))))
