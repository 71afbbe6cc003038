//! Precompiled QuickJS bytecode for the bundled scripts (moment.js, the Date shim, the
//! runtime), so that creating an evaluator does not parse 50 KB of JavaScript each time.
//!
//! The scripts are compiled once per process, in a scratch runtime, and the bytecode is kept
//! in memory only: bytecode is tied to the exact QuickJS build, which the process is.
//! rquickjs exposes bytecode only for modules, so this goes through its raw bindings; all the
//! unsafe code of the crate is here.

use std::ffi::{CString, c_void};
use std::sync::OnceLock;

use rquickjs::{Context, Ctx, Runtime, qjs};

/// A script's bytecode; evaluating it yields the script's completion value.
pub struct Script {
    bytes: Vec<u8>,
}

/// Compiles `source` (sloppy-mode global script) to bytecode with the given `ctx`.
fn compile(ctx: &Ctx<'_>, name: &str, source: &str) -> Result<Script, String> {
    let src = CString::new(source).map_err(|_| format!("{name} contains a NUL byte"))?;
    let file = CString::new(name).map_err(|_| format!("{name}: bad name"))?;
    let raw = ctx.as_raw().as_ptr();
    // SAFETY: `raw` is the live context of `ctx`; the source and name outlive the call; the
    // compiled value is freed exactly once and the written buffer is freed with js_free
    // after being copied.
    unsafe {
        let func = qjs::JS_Eval(
            raw,
            src.as_ptr(),
            source.len() as _,
            file.as_ptr(),
            (qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32,
        );
        if qjs::JS_IsException(func) {
            return Err(format!("{name} does not compile: {}", crate::exception_message(&ctx.catch())));
        }
        let mut len: qjs::size_t = 0;
        let buf = qjs::JS_WriteObject(raw, &mut len, func, qjs::JS_WRITE_OBJ_BYTECODE as i32);
        qjs::JS_FreeValue(raw, func);
        if buf.is_null() {
            return Err(format!("{name} could not be serialized: {}", crate::exception_message(&ctx.catch())));
        }
        let bytes = std::slice::from_raw_parts(buf, len as usize).to_vec();
        qjs::js_free(raw, buf as *mut c_void);
        Ok(Script { bytes })
    }
}

impl Script {
    /// Runs the script in `ctx` and returns its completion value.
    pub fn eval<'js>(&self, ctx: &Ctx<'js>) -> rquickjs::Result<rquickjs::Value<'js>> {
        let raw = ctx.as_raw().as_ptr();
        // SAFETY: the bytes were produced by JS_WriteObject of this same QuickJS build (see
        // `compile`), so JS_ReadObject gets valid bytecode. JS_EvalFunction takes ownership of
        // the read function; the result is handed to rquickjs, which frees it.
        unsafe {
            let func =
                qjs::JS_ReadObject(raw, self.bytes.as_ptr(), self.bytes.len() as _, qjs::JS_READ_OBJ_BYTECODE as i32);
            if qjs::JS_IsException(func) {
                return Err(rquickjs::Error::Exception);
            }
            let result = qjs::JS_EvalFunction(raw, func);
            if qjs::JS_IsException(result) {
                return Err(rquickjs::Error::Exception);
            }
            Ok(rquickjs::Value::from_raw(ctx.clone(), result))
        }
    }
}

/// The bundled scripts, in load order.
pub struct Bundle {
    pub date_shim: Script,
    pub moment: Script,
    pub runtime: Script,
}

/// The bundle, compiled on first use.
pub fn bundle() -> Result<&'static Bundle, String> {
    static BUNDLE: OnceLock<Result<Bundle, String>> = OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let rt = Runtime::new().map_err(|e| e.to_string())?;
            let context = Context::full(&rt).map_err(|e| e.to_string())?;
            context.with(|ctx| {
                Ok(Bundle {
                    date_shim: compile(&ctx, "date_shim.js", crate::DATE_SHIM_JS)?,
                    moment: compile(&ctx, "moment.min.js", crate::MOMENT_JS)?,
                    runtime: compile(&ctx, "runtime.js", crate::RUNTIME_JS)?,
                })
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}
