(module (func (export "t") unreachable))
