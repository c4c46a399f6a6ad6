// The seed protocol's reference client: `MessageQueue` and `ChatWebSocket` exactly as
// written in the seed WebSocket protocol document (its "Offline Support Implementation"
// and "WebSocket Client Class" sections), copied verbatim between the two markers below.
// Parley must work with this code unchanged (docs/protocol.md). Around it, only what the
// seed leaves to the app: a storage (`AsyncStorage`), the server URL (`WS_BASE_URL`),
// and the helpers the seed calls but does not show (`getQueue`, `removeFromQueue`,
// `setupEventHandlers`). Node needs `--experimental-websocket` for `WebSocket`.

const memory = new Map();
const AsyncStorage = {
    async getItem(key) {
        return memory.has(key) ? memory.get(key) : null;
    },
    async setItem(key, value) {
        memory.set(key, value);
    },
};

let WS_BASE_URL = "";
export function setBaseUrl(url) {
    WS_BASE_URL = url;
}

// ---- verbatim from the seed: begin ----
class MessageQueue {
    static async addToQueue(message) {
        const queue = await this.getQueue();
        queue.push(message);
        await AsyncStorage.setItem('messageQueue', JSON.stringify(queue));
    }

    static async processQueue(wsClient) {
        const queue = await this.getQueue();
        for (const message of queue) {
            try {
                await wsClient.send(JSON.stringify(message));
                // Remove from queue after successful send
                await this.removeFromQueue(message.local_id);
            } catch (error) {
                console.error('Failed to send queued message:', error);
                break; // Stop processing if sending fails
            }
        }
    }
}

class ChatWebSocket {
    constructor(token) {
        this.token = token;
        this.messageQueue = [];
        this.reconnectAttempts = 0;
        this.maxReconnectAttempts = 5;
        this.listeners = new Map();
    }

    connect() {
        this.ws = new WebSocket(`${WS_BASE_URL}?token=${this.token}`);
        this.setupEventHandlers();
    }

    on(event, callback) {
        this.listeners.set(event, callback);
    }

    send(message) {
        if (this.ws?.readyState === WebSocket.OPEN) {
            this.ws.send(JSON.stringify(message));
            return true;
        }
        MessageQueue.addToQueue(message);
        return false;
    }
}
// ---- verbatim from the seed: end ----

// What the seed calls but leaves to the app.
MessageQueue.getQueue = async function getQueue() {
    return JSON.parse((await AsyncStorage.getItem('messageQueue')) || '[]');
};

MessageQueue.removeFromQueue = async function removeFromQueue(localId) {
    const queue = await this.getQueue();
    await AsyncStorage.setItem(
        'messageQueue',
        JSON.stringify(queue.filter((m) => m.local_id !== localId)),
    );
};

ChatWebSocket.prototype.setupEventHandlers = function setupEventHandlers() {
    this.ws.onmessage = (event) => {
        const data = JSON.parse(event.data);
        const callback = this.listeners.get(data.type);
        if (callback) callback(data);
    };
    this.ws.onclose = (event) => {
        const callback = this.listeners.get('close');
        if (callback) callback(event);
    };
};

export { ChatWebSocket, MessageQueue };
