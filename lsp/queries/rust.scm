; Definitions: @definition.<kind> with its @name. `impl` blocks only name their members' parent.
(function_item name: (identifier) @name) @definition.function
(function_signature_item name: (identifier) @name) @definition.function
(struct_item name: (type_identifier) @name) @definition.class
(union_item name: (type_identifier) @name) @definition.class
(enum_item name: (type_identifier) @name) @definition.type
(trait_item name: (type_identifier) @name) @definition.interface
(type_item name: (type_identifier) @name) @definition.type
(const_item name: (identifier) @name) @definition.constant
(static_item name: (identifier) @name) @definition.constant
(macro_definition name: (identifier) @name) @definition.macro
(mod_item name: (identifier) @name body: (declaration_list)) @definition.module
(impl_item type: [
  (type_identifier) @name
  (generic_type type: (type_identifier) @name)
  (scoped_type_identifier name: (type_identifier) @name)]) @definition.impl

; Imports: decoded by lsp/imports.py (`use` trees and `mod x;` declarations).
(use_declaration) @import
(mod_item name: (identifier) !body) @import

; References.
(scoped_identifier path: (identifier) @reference.qualifier name: (identifier) @reference.member)
(scoped_type_identifier path: (identifier) @reference.qualifier name: (type_identifier) @reference.member)
; Inside macro calls (println!, vec!, assert!) paths are only tokens.
(token_tree (identifier) @reference.qualifier . "::" . (identifier) @reference.member)
(call_expression function: (identifier) @reference.call)
(macro_invocation macro: (identifier) @reference.call)
(type_identifier) @reference.type
(identifier) @reference
