// A tiny stand-in for React's hook runtime, enough to test ssehub-react.js without npm packages: one component,
// hooks kept by call order, effects run after each render in order (cleanups first when their deps changed),
// state updates re-render synchronously (or after the current render/commit finishes).

/** The React module stand-in: each hook call goes to the component being rendered. */
export const React = {
  useState: (...args) => current.useState(...args),
  useRef: (...args) => current.useRef(...args),
  useMemo: (...args) => current.useMemo(...args),
  useEffect: (...args) => current.useEffect(...args),
};

/** @type {any} */
let current = null;

/** Render `component(props)` with the hook runtime; returns {render, unmount, get output, get renders}. */
export function mount(component, props) {
  /** @type {any[]} */
  const slots = [];
  let index = 0;
  let busy = false;
  let dirty = false;
  let output;
  let renders = 0;
  let pending = [];
  let currentProps = props;

  const changed = (a, b) =>
    a === undefined || b === undefined || a.length !== b.length || a.some((v, i) => !Object.is(v, b[i]));

  const hooks = {
    useState(initial) {
      const i = index++;
      if (slots[i] === undefined) slots[i] = { value: typeof initial === "function" ? initial() : initial };
      const slot = slots[i];
      const set = (next) => {
        const value = typeof next === "function" ? next(slot.value) : next;
        if (Object.is(value, slot.value)) return;
        slot.value = value;
        if (busy) dirty = true;
        else run();
      };
      return [slot.value, set];
    },
    useRef(initial) {
      const i = index++;
      if (slots[i] === undefined) slots[i] = { current: initial };
      return slots[i];
    },
    useMemo(factory, deps) {
      const i = index++;
      if (slots[i] === undefined || changed(slots[i].deps, deps)) slots[i] = { value: factory(), deps };
      return slots[i].value;
    },
    useEffect(effect, deps) {
      const i = index++;
      const previous = slots[i];
      if (previous !== undefined && !changed(previous.deps, deps)) return;
      slots[i] = { deps, cleanup: previous?.cleanup };
      pending.push(() => {
        slots[i].cleanup?.();
        const cleanup = effect();
        slots[i].cleanup = typeof cleanup === "function" ? cleanup : undefined;
      });
    },
  };

  function renderOnce() {
    index = 0;
    pending = [];
    renders += 1;
    const outer = current;
    current = hooks;
    try {
      output = component(currentProps);
    } finally {
      current = outer;
    }
    for (const effect of pending) effect();
  }

  function run() {
    busy = true;
    try {
      renderOnce();
      while (dirty) {
        dirty = false;
        renderOnce();
      }
    } finally {
      busy = false;
    }
  }

  run();
  return {
    render(nextProps) {
      currentProps = nextProps;
      run();
    },
    unmount() {
      for (const slot of slots) slot?.cleanup?.();
    },
    get output() {
      return output;
    },
    get renders() {
      return renders;
    },
  };
}
