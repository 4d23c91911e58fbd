; Definitions: the whole node as @definition.<kind>, its name as @name.
(function_declaration name: (identifier) @name) @definition.function
(generator_function_declaration name: (identifier) @name) @definition.function
(class_declaration name: (identifier) @name) @definition.class
(method_definition name: (_) @name) @definition.method
(field_definition property: (property_identifier) @name) @definition.field
(program (lexical_declaration (variable_declarator name: (identifier) @name)) @definition.variable)
(program (variable_declaration (variable_declarator name: (identifier) @name)) @definition.variable)
(program (export_statement
  declaration: (lexical_declaration (variable_declarator name: (identifier) @name))) @definition.variable)

; Imports: decoded by lsp/imports.py (ES modules, re-exports, CommonJS require).
(import_statement) @import
(export_statement source: (string)) @import
(variable_declarator
  value: (call_expression function: (identifier) @_require arguments: (arguments (string)))
  (#eq? @_require "require")) @import

; References.
(member_expression object: (identifier) @reference.qualifier property: (property_identifier) @reference.member)
(call_expression function: (identifier) @reference.call)
(new_expression constructor: (identifier) @reference.call)
(identifier) @reference
