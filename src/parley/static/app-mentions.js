// @ completion in the message box: typing "@" offers the conversation's members; arrows
// move, Enter or Tab picks, Escape closes, and the pick is inserted as "@user ".

import { h, paintAvatar } from './app-ui.js';
import { mentionQuery } from './app-text.js';

const MAX_OPTIONS = 8;

export class MentionPicker {
  /** members(): the ids to offer (not oneself); decorate(user): a node shown beside it, or null. */
  constructor(input, box, { members, decorate }) {
    this.input = input;
    this.box = box;
    this.members = members;
    this.decorate = decorate;
    this.current = null; // {start, prefix, users, index}
  }

  get isOpen() {
    return this.current !== null;
  }

  /** Open, narrow or close the list for what is typed before the caret. */
  update() {
    const input = this.input;
    const q = mentionQuery(input.value, input.selectionStart ?? input.value.length);
    if (!q) return this.close();
    const prefix = q.prefix.toLowerCase();
    const users = this.members().filter((u) => u.toLowerCase().startsWith(prefix)).slice(0, MAX_OPTIONS);
    if (!users.length) return this.close();
    const old = this.current;
    const index = old && old.prefix === q.prefix ? Math.min(old.index, users.length - 1) : 0;
    this.current = { start: q.start, prefix: q.prefix, users, index };
    this.box.replaceChildren(
      ...users.map((u, i) => {
        const avatar = h('span', { class: 'avatar small-avatar', 'aria-hidden': 'true' });
        paintAvatar(avatar, u);
        return h('li', {
          role: 'option', id: `mention-${i}`, class: `mention-option${i === index ? ' selected' : ''}`,
          'aria-selected': i === index ? 'true' : 'false', dataset: { user: u },
          onmousedown: (e) => {
            e.preventDefault(); // keep the focus in the message box
            this.pick(u);
          },
        }, avatar, h('span', { class: 'mention-name' }, u), this.decorate(u));
      }),
    );
    this.box.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    input.setAttribute('aria-activedescendant', `mention-${index}`);
  }

  close() {
    this.current = null;
    this.box.hidden = true;
    this.input.setAttribute('aria-expanded', 'false');
    this.input.removeAttribute('aria-activedescendant');
  }

  /** Replace the "@prefix" being typed with "@user ". */
  pick(user = this.current?.users[this.current.index]) {
    const input = this.input;
    if (!this.current || !user) return;
    const caret = input.selectionStart ?? input.value.length;
    const before = input.value.slice(0, this.current.start);
    const after = input.value.slice(caret);
    const text = `@${user} `;
    input.value = before + text + after.replace(/^ /, '');
    const at = before.length + text.length;
    input.setSelectionRange(at, at);
    this.close();
    input.dispatchEvent(new Event('input', { bubbles: true }));
    input.focus();
  }

  /** Handle a keydown while the list is open; true when it was for the list. */
  onKeyDown(e) {
    if (!this.current || e.isComposing) return false;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      const n = this.current.users.length;
      this.current.index = (this.current.index + (e.key === 'ArrowDown' ? 1 : -1) + n) % n;
      this.update();
    } else if (e.key === 'Enter' || e.key === 'Tab') {
      this.pick();
    } else if (e.key === 'Escape') {
      this.close();
    } else {
      return false;
    }
    e.preventDefault();
    return true;
  }
}
