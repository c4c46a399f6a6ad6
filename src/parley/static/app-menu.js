// A bubble's small menu, in one popover: the reaction picker, or edit and delete (with a
// confirmation) for one's own messages.

import { h } from './app-ui.js';
import { QUICK_EMOJI } from './app-messages.js';

export class BubbleMenu {
  /**
   * ctx: current(m) → the message as it is now, mine(m, emoji) → whether I reacted so,
   * onReact(m, emoji), onEdit(m), onDelete(m).
   */
  constructor(el, ctx) {
    this.el = el;
    this.ctx = ctx;
    this.for = null; // {kind, id}
  }

  /** Open `kind` ('react' | 'more') for message `m` by `anchor`; a second click closes it. */
  open(kind, m, anchor) {
    const pop = this.el;
    if (this.for && this.for.kind === kind && this.for.id === m.id && !pop.hidden) {
      this.close();
      return;
    }
    this.for = { kind, id: m.id };
    const { current, mine } = this.ctx;
    if (kind === 'react') {
      pop.className = 'popover picker';
      pop.setAttribute('aria-label', 'React');
      pop.replaceChildren(
        ...QUICK_EMOJI.map((emoji) =>
          h('button', {
            type: 'button', class: 'pick', role: 'menuitemcheckbox', dataset: { emoji }, title: `React with ${emoji}`,
            'aria-checked': mine(current(m), emoji) ? 'true' : 'false',
            onclick: () => {
              this.close();
              this.ctx.onReact(current(m), emoji);
            },
          }, emoji),
        ),
      );
    } else {
      pop.className = 'popover menu';
      pop.setAttribute('aria-label', 'Message actions');
      const del = h('button', { type: 'button', role: 'menuitem', class: 'menu-item menu-delete danger' }, 'Delete');
      del.addEventListener('click', () => {
        if (!del.classList.contains('confirm')) {
          del.classList.add('confirm');
          del.textContent = 'Delete for everyone';
          return;
        }
        this.close();
        this.ctx.onDelete(current(m));
      });
      const edit = h('button', {
        type: 'button', role: 'menuitem', class: 'menu-item menu-edit',
        onclick: () => {
          this.close();
          this.ctx.onEdit(current(m));
        },
      }, 'Edit');
      pop.replaceChildren(edit, del);
    }
    pop.hidden = false;
    const r = anchor.getBoundingClientRect();
    const width = pop.offsetWidth;
    const height = pop.offsetHeight;
    const left = Math.min(Math.max(8, r.left + r.width / 2 - width / 2), window.innerWidth - width - 8);
    const top = r.top - height - 6 > 8 ? r.top - height - 6 : r.bottom + 6;
    pop.style.left = `${left}px`;
    pop.style.top = `${top}px`;
    pop.querySelector('button')?.focus();
  }

  close() {
    this.for = null;
    this.el.hidden = true;
  }
}
